// Private access to one storage account: public network access off, shared keys off (when every
// connection is identity-based), and one private endpoint per storage service with its DNS zone group.
// Used for the data accounts (sources and replicas), which exist already: declaring the account
// again with its own sku, kind and location updates only the properties named here.

@description('The storage account to lock down.')
param accountName string

@description('The account\'s own region, sku and kind (read from the existing account).')
param accountLocation string
param skuName string
param kind string

@description('false when every connection to this account is identity-based (no keys, no SAS signed with keys).')
param allowSharedKeyAccess bool

@description('Region of the virtual network that holds the private endpoints.')
param location string

@description('Subnet for the private endpoints.')
param subnetId string

@description('Storage services to reach privately (blob, dfs, table, queue).')
param groups array

@description('Private DNS zone id per service: { blob: <zone id>, dfs: <zone id>, ... }.')
param zoneIds object

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: accountName
  location: accountLocation
  sku: { name: skuName }
  kind: kind
  properties: {
    publicNetworkAccess: 'Disabled'
    allowSharedKeyAccess: allowSharedKeyAccess
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    networkAcls: { defaultAction: 'Deny', bypass: 'AzureServices' }
  }
}

resource endpoints 'Microsoft.Network/privateEndpoints@2023-11-01' = [for group in groups: {
  name: '${accountName}-${group}-pe'
  location: location
  properties: {
    subnet: { id: subnetId }
    privateLinkServiceConnections: [
      {
        name: '${accountName}-${group}'
        properties: {
          privateLinkServiceId: account.id
          groupIds: [ group ]
        }
      }
    ]
  }
}]

// The zone group registers the endpoint's private IP as <account>.<group>.core.windows.net in the zone.
resource zoneGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2023-11-01' = [for (group, i) in groups: {
  parent: endpoints[i]
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: group
        properties: { privateDnsZoneId: zoneIds[group] }
      }
    ]
  }
}]
