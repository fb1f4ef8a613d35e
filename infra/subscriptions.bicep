// Event Grid subscriptions of one source account's system topic to replicate_commit.
param systemTopicName string
param subscriptions array
param functionResourceId string
param deadLetterAccountId string
param deadLetterContainer string
@description('Dead-letter with the system topic\'s own identity (needed when the account refuses public access).')
param deadLetterWithIdentity bool = false

var deadLetterTarget = {
  endpointType: 'StorageBlob'
  properties: {
    resourceId: deadLetterAccountId
    blobContainerName: deadLetterContainer
  }
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource subscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = [for sub in subscriptions: {
  parent: topic
  name: sub.name
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: functionResourceId
        maxEventsPerBatch: 1
      }
    }
    filter: {
      includedEventTypes: sub.filter.includedEventTypes
      subjectBeginsWith: sub.filter.subjectBeginsWith
      advancedFilters: sub.filter.advancedFilters
      enableAdvancedFilteringOnArrays: true
    }
    // Event Grid retries with backoff for up to a day, then dead-letters; the lag timer heals the rest.
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
    deadLetterDestination: deadLetterWithIdentity ? null : deadLetterTarget
    deadLetterWithResourceIdentity: deadLetterWithIdentity ? {
      identity: { type: 'SystemAssigned' }
      deadLetterDestination: deadLetterTarget
    } : null
  }
}]
