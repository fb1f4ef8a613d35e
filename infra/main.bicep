// Delta Lake cross-region replication: Functions app, identity, roles and Event Grid wiring.
// The storage accounts (sources and replicas) already exist in this resource group.
// `eventSubscriptions` is exactly what `python -m cli events` prints for your configuration.

@description('Base name of the function app and its resources.')
param appName string

@description('Region of the function app (put it near the replicas it writes to, or the primary).')
param location string = resourceGroup().location

@description('Output of `python -m cli events`: per source account, the subscriptions and their filters.')
param eventSubscriptions object

@description('Connection setting name -> storage account name for every replica location (the app settings `<NAME>__blobServiceUri`); source accounts come from eventSubscriptions.')
param replicaConnections object

@description('The replication configuration document (REPLICATION_CONFIG).')
param replicationConfig object

@description('Event Grid custom topic endpoint for DeltaReplication.* alerts (empty: no alerts).')
param alertTopicEndpoint string = ''

@description('Private access: storage reached only through private endpoints in a VNet the function app is integrated with; public network access and shared keys off.')
param privateNetworking bool = false

@description('Address space of the VNet (privateNetworking only); two /24 subnets are carved from its first addresses.')
param vnetAddressPrefix string = '10.40.0.0/16'

var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var sources = eventSubscriptions.sourceAccounts
var replicas = items(replicaConnections)
// (account, container) for every container the app writes: see containerRoles.
var writtenContainers = flatten(map(sources, s => map(s.containers, c => { account: s.account, container: c })))
// Every data account once (an account can hold sources and replicas).
var dataAccounts = union(map(sources, s => s.account), map(replicas, r => r.value))
// The app settings below are all identity-based (<NAME>__blobServiceUri, AzureWebJobsStorage__accountName),
// so with private access no account needs its keys.
var identityBasedConnections = true
var dataGroups = [ 'blob', 'dfs' ]
var hostGroups = [ 'blob', 'dfs', 'table', 'queue' ]
var zoneGroupNames = [ 'blob', 'dfs', 'table', 'queue' ]
var privateStorageProperties = {
  publicNetworkAccess: 'Disabled'
  allowSharedKeyAccess: !identityBasedConnections
  networkAcls: { defaultAction: 'Deny', bypass: 'AzureServices' }
}

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: take(toLower(replace('${appName}host', '-', '')), 24)
  location: location
  sku: { name: 'Standard_LRS' }
  kind: 'StorageV2'
  properties: union({ allowBlobPublicAccess: false, minimumTlsVersion: 'TLS1_2' }, privateNetworking ? privateStorageProperties : {})
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  name: '${hostStorage.name}/default/deployments'
}

resource deadLetters 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  name: '${hostStorage.name}/default/eventgrid-deadletters'
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: '${appName}-plan'
  location: location
  kind: 'functionapp'
  sku: { tier: 'FlexConsumption', name: 'FC1' }
  properties: { reserved: true }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  kind: 'functionapp,linux'
  identity: { type: 'SystemAssigned' }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Outbound calls (storage, Event Grid alerts) leave through the VNet, where the private DNS
    // zones resolve the storage accounts to their private endpoints.
    virtualNetworkSubnetId: privateNetworking ? appSubnet.id : null
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorage.properties.primaryEndpoints.blob}deployments'
          authentication: { type: 'SystemAssignedIdentity' }
        }
      }
      scaleAndConcurrency: { maximumInstanceCount: 40, instanceMemoryMB: 2048 }
      runtime: { name: 'python', version: '3.11' }
    }
    siteConfig: {
      vnetRouteAllEnabled: privateNetworking
      appSettings: concat([
        { name: 'AzureWebJobsStorage__accountName', value: hostStorage.name }
        { name: 'REPLICATION_CONFIG', value: string(replicationConfig) }
        { name: 'LAG_CHECK_SCHEDULE', value: '0 */5 * * * *' }
        { name: 'SNAPSHOT_SCHEDULE', value: '0 0 2 * * *' }
        { name: 'RETENTION_SCHEDULE', value: '0 0 3 * * *' }
        { name: 'STATUS_CONNECTION', value: 'AzureWebJobsStorage' }
        { name: 'AzureWebJobsStorage__tableServiceUri', value: hostStorage.properties.primaryEndpoints.table }
        { name: 'ALERT_TOPIC_ENDPOINT', value: alertTopicEndpoint }
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: insights.properties.ConnectionString }
      ], [for s in sources: {
        name: '${s.connection}__blobServiceUri'
        value: 'https://${s.account}.blob.${environment().suffixes.storage}'
      }], [for r in replicas: {
        name: '${r.key}__blobServiceUri'
        value: 'https://${r.value}.blob.${environment().suffixes.storage}'
      }])
    }
  }
}

// Application Insights receives the app's metrics (lag per table and replica, recovery point per group and
// location: shared/telemetry/metrics.py); the workbook charts them (infra/workbook.json).
resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${appName}-insights'
  location: location
  kind: 'web'
  properties: { Application_Type: 'web' }
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, appName, 'replication-workbook')
  location: location
  kind: 'shared'
  properties: {
    displayName: '${appName}: replication lag and group recovery points'
    category: 'workbook'
    sourceId: insights.id
    serializedData: loadTextContent('workbook.json')
  }
}

// The host's own storage: blobs (deployment, timers) and the ReplicationStatus table.
resource hostBlobRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: hostStorage
  name: guid(hostStorage.id, app.id, storageBlobDataContributor)
  properties: {
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}

resource hostTableRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: hostStorage
  name: guid(hostStorage.id, app.id, storageTableDataContributor)
  properties: {
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
  }
}

resource sourceAccounts 'Microsoft.Storage/storageAccounts@2023-05-01' existing = [for s in sources: {
  name: s.account
}]

// Every location of a table can become the primary (promote) and every former primary becomes a
// replica again (rejoin), so the app needs, on every account that holds a location:
// - Storage Blob Data Reader on the account: reading it as a primary, and the user delegation key
//   behind server-side copy SAS (an account-level action, which a container scope cannot grant);
// - Storage Blob Data Contributor on each container it writes there (`containers` in the events output:
//   table locations, snapshots): replicating into it, rejoin's quarantine copies and log deletes,
//   retention. Scoped to those containers, not the account: least privilege survives a failover.
resource sourceRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (s, i) in sources: {
  scope: sourceAccounts[i]
  name: guid(sourceAccounts[i].id, app.id, storageBlobDataReader)
  properties: {
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
  }
}]

// The containers are declared (created if missing) so that each role has its scope before the first write.
resource tableContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for c in writtenContainers: {
  name: '${c.account}/default/${c.container}'
}]

resource containerRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (c, i) in writtenContainers: {
  scope: tableContainers[i]
  name: guid(tableContainers[i].id, app.id, storageBlobDataContributor)
  properties: {
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}]

// One system topic per source account; one subscription per table, filtered to its _delta_log/.
resource systemTopics 'Microsoft.EventGrid/systemTopics@2022-06-15' = [for (s, i) in sources: {
  name: '${s.account}-delta-log'
  location: location
  identity: { type: 'SystemAssigned' }
  properties: {
    source: sourceAccounts[i].id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}]

module subscriptions 'subscriptions.bicep' = [for (s, i) in sources: {
  name: 'delta-log-subscriptions-${i}'
  params: {
    systemTopicName: systemTopics[i].name
    subscriptions: s.subscriptions
    functionResourceId: '${app.id}/functions/replicate_commit'
    deadLetterAccountId: hostStorage.id
    deadLetterContainer: 'eventgrid-deadletters'
    deadLetterWithIdentity: privateNetworking
  }
  dependsOn: [ deadLetterRoles ]
}]

// With private access the host account takes dead letters only from the system topics' own identities
// (trusted-service access), so each topic gets Storage Blob Data Contributor there.
resource deadLetterRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (s, i) in sources: if (privateNetworking) {
  scope: hostStorage
  name: guid(hostStorage.id, systemTopics[i].id, storageBlobDataContributor)
  properties: {
    principalId: systemTopics[i].identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}]

// ---- Private networking (privateNetworking = true) --------------------------------------------
resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' = if (privateNetworking) {
  name: '${appName}-vnet'
  location: location
  properties: {
    addressSpace: { addressPrefixes: [ vnetAddressPrefix ] }
  }
}

// Flex Consumption integrates through a subnet delegated to Microsoft.App/environments.
resource appSubnet 'Microsoft.Network/virtualNetworks/subnets@2023-11-01' = if (privateNetworking) {
  parent: vnet
  name: 'functions'
  properties: {
    addressPrefix: cidrSubnet(vnetAddressPrefix, 24, 0)
    delegations: [ { name: 'flex', properties: { serviceName: 'Microsoft.App/environments' } } ]
  }
}

resource endpointSubnet 'Microsoft.Network/virtualNetworks/subnets@2023-11-01' = if (privateNetworking) {
  parent: vnet
  name: 'private-endpoints'
  properties: {
    addressPrefix: cidrSubnet(vnetAddressPrefix, 24, 1)
    privateEndpointNetworkPolicies: 'Disabled'
  }
  dependsOn: [ appSubnet ] // subnets of one VNet are updated one at a time
}

resource zones 'Microsoft.Network/privateDnsZones@2020-06-01' = [for group in zoneGroupNames: if (privateNetworking) {
  name: 'privatelink.${group}.${environment().suffixes.storage}'
  location: 'global'
}]

resource zoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [for (group, i) in zoneGroupNames: if (privateNetworking) {
  parent: zones[i]
  name: '${appName}-vnet-link'
  location: 'global'
  properties: {
    registrationEnabled: false
    virtualNetwork: { id: vnet.id }
  }
}]

var zoneIds = {
  blob: resourceId('Microsoft.Network/privateDnsZones', 'privatelink.blob.${environment().suffixes.storage}')
  dfs: resourceId('Microsoft.Network/privateDnsZones', 'privatelink.dfs.${environment().suffixes.storage}')
  table: resourceId('Microsoft.Network/privateDnsZones', 'privatelink.table.${environment().suffixes.storage}')
  queue: resourceId('Microsoft.Network/privateDnsZones', 'privatelink.queue.${environment().suffixes.storage}')
}

// The host account: blob (deployment package, timers), dfs, table (status, transfer) and queue.
resource hostEndpoints 'Microsoft.Network/privateEndpoints@2023-11-01' = [for group in hostGroups: if (privateNetworking) {
  name: '${hostStorage.name}-${group}-pe'
  location: location
  properties: {
    subnet: { id: endpointSubnet.id }
    privateLinkServiceConnections: [
      {
        name: '${hostStorage.name}-${group}'
        properties: {
          privateLinkServiceId: hostStorage.id
          groupIds: [ group ]
        }
      }
    ]
  }
}]

resource hostZoneGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2023-11-01' = [for (group, i) in hostGroups: if (privateNetworking) {
  parent: hostEndpoints[i]
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: group
        properties: { privateDnsZoneId: zoneIds[group] }
      }
    ]
  }
  dependsOn: [ zones ]
}]

resource dataAccountsExisting 'Microsoft.Storage/storageAccounts@2023-05-01' existing = [for a in dataAccounts: {
  name: a
}]

// Sources and replicas: blob and dfs endpoints, public access and shared keys off.
module dataAccountsPrivate 'private-storage.bicep' = [for (a, i) in dataAccounts: if (privateNetworking) {
  name: 'private-storage-${i}'
  params: {
    accountName: a
    accountLocation: dataAccountsExisting[i].location
    skuName: dataAccountsExisting[i].sku.name
    kind: dataAccountsExisting[i].kind
    allowSharedKeyAccess: !identityBasedConnections
    location: location
    subnetId: endpointSubnet.id
    groups: dataGroups
    zoneIds: zoneIds
  }
  dependsOn: [ zones ]
}]

output functionAppName string = app.name
output principalId string = app.identity.principalId
