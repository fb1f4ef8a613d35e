// Delta Lake cross-region replication: Functions app, identity, roles and Event Grid wiring.
// The storage accounts (sources and replicas) already exist in this resource group.
// `eventSubscriptions` is exactly what `python -m cli events` prints for your configuration.

@description('Base name of the function app and its resources.')
param appName string

@description('Region of the function app (put it near the replicas it writes to, or the primary).')
param location string = resourceGroup().location

@description('Output of `python -m cli events`: per source account, the subscriptions and their filters.')
param eventSubscriptions object

@description('Replica connections: setting name -> storage account name.')
param replicaConnections object

@description('The replication configuration document (REPLICATION_CONFIG).')
param replicationConfig object

@description('Event Grid custom topic endpoint for DeltaReplication.* alerts (empty: no alerts).')
param alertTopicEndpoint string = ''

var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var sources = eventSubscriptions.sourceAccounts
var replicas = items(replicaConnections)

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: take(toLower(replace('${appName}host', '-', '')), 24)
  location: location
  sku: { name: 'Standard_LRS' }
  kind: 'StorageV2'
  properties: { allowBlobPublicAccess: false, minimumTlsVersion: 'TLS1_2' }
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
      appSettings: concat([
        { name: 'AzureWebJobsStorage__accountName', value: hostStorage.name }
        { name: 'REPLICATION_CONFIG', value: string(replicationConfig) }
        { name: 'LAG_CHECK_SCHEDULE', value: '0 */5 * * * *' }
        { name: 'SNAPSHOT_SCHEDULE', value: '0 0 2 * * *' }
        { name: 'RETENTION_SCHEDULE', value: '0 0 3 * * *' }
        { name: 'STATUS_CONNECTION', value: 'AzureWebJobsStorage' }
        { name: 'AzureWebJobsStorage__tableServiceUri', value: hostStorage.properties.primaryEndpoints.table }
        { name: 'ALERT_TOPIC_ENDPOINT', value: alertTopicEndpoint }
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

// Sources are only read: Storage Blob Data Reader (it also allows user delegation keys for copy SAS).
resource sourceRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (s, i) in sources: {
  scope: sourceAccounts[i]
  name: guid(sourceAccounts[i].id, app.id, storageBlobDataReader)
  properties: {
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
  }
}]

resource replicaAccounts 'Microsoft.Storage/storageAccounts@2023-05-01' existing = [for r in replicas: {
  name: r.value
}]

resource replicaRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (r, i) in replicas: {
  scope: replicaAccounts[i]
  name: guid(replicaAccounts[i].id, app.id, storageBlobDataContributor)
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
  }
}]

output functionAppName string = app.name
output principalId string = app.identity.principalId
