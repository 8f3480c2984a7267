//! What Lambda's SQS event source mapping does, against a local SQS endpoint (moto): receive a
//! batch, hand it to the function as an `aws:sqs` event, delete the messages that succeeded, and
//! leave the ones reported in `batchItemFailures` (or the whole batch, when the invocation
//! fails) to come back after the visibility timeout, until the queue's redrive policy moves them
//! to the dead-letter queue.

use serde_json::{json, Value};

/// moto's SQS JSON API. moto does not check signatures; it reads the service from the
/// credential scope only.
#[derive(Debug, Clone)]
pub struct Sqs {
    endpoint: String,
    http: reqwest::Client,
}

#[derive(Debug, Clone)]
pub struct Queue {
    pub name: String,
    pub url: String,
    pub arn: String,
}

/// One message as SQS hands it out.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub receipt: String,
    pub body: String,
}

/// What happened to a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchResult {
    pub received: usize,
    pub deleted: usize,
    pub failed: usize,
    /// The invocation itself failed (every message stays).
    pub invocation_failed: bool,
}

impl Sqs {
    pub fn new(endpoint: &str) -> Sqs {
        Sqs {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(&self, action: &str, body: Value) -> Result<Value, String> {
        let r = self
            .http
            .post(&self.endpoint)
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=00",
            )
            .header("X-Amz-Target", format!("AmazonSQS.{action}"))
            .header("Content-Type", "application/x-amz-json-1.0")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("SQS {action}: {e}"))?;
        let status = r.status();
        let text = r.text().await.map_err(|e| format!("SQS {action}: {e}"))?;
        if !status.is_success() {
            return Err(format!("SQS {action}: {status} {text}"));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| format!("SQS {action}: {e}: {text}"))
    }

    /// A queue; with `dead_letter`, messages received `max_receives` times move there.
    pub async fn create_queue(
        &self,
        name: &str,
        visibility_seconds: u32,
        dead_letter: Option<(&Queue, u32)>,
    ) -> Result<Queue, String> {
        let mut attributes = json!({"VisibilityTimeout": visibility_seconds.to_string()});
        if let Some((dlq, max)) = dead_letter {
            attributes["RedrivePolicy"] = json!({"deadLetterTargetArn": dlq.arn, "maxReceiveCount": max.to_string()})
                .to_string()
                .into();
        }
        let created = self
            .call("CreateQueue", json!({"QueueName": name, "Attributes": attributes}))
            .await?;
        let url = created["QueueUrl"]
            .as_str()
            .ok_or("CreateQueue: no QueueUrl")?
            .to_string();
        let attrs = self
            .call(
                "GetQueueAttributes",
                json!({"QueueUrl": url, "AttributeNames": ["QueueArn"]}),
            )
            .await?;
        let arn = attrs["Attributes"]["QueueArn"]
            .as_str()
            .ok_or("GetQueueAttributes: no QueueArn")?
            .to_string();
        Ok(Queue {
            name: name.to_string(),
            url,
            arn,
        })
    }

    pub async fn receive(&self, q: &Queue, max: u32) -> Result<Vec<Message>, String> {
        let r = self
            .call(
                "ReceiveMessage",
                json!({"QueueUrl": q.url, "MaxNumberOfMessages": max, "WaitTimeSeconds": 0}),
            )
            .await?;
        Ok(r["Messages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| Message {
                        id: m["MessageId"].as_str().unwrap_or_default().to_string(),
                        receipt: m["ReceiptHandle"].as_str().unwrap_or_default().to_string(),
                        body: m["Body"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn send(&self, q: &Queue, body: &str) -> Result<(), String> {
        self.call("SendMessage", json!({"QueueUrl": q.url, "MessageBody": body}))
            .await
            .map(|_| ())
    }

    pub async fn delete(&self, q: &Queue, m: &Message) -> Result<(), String> {
        self.call("DeleteMessage", json!({"QueueUrl": q.url, "ReceiptHandle": m.receipt}))
            .await
            .map(|_| ())
    }

    /// Visible plus in-flight messages.
    pub async fn depth(&self, q: &Queue) -> Result<u64, String> {
        let r = self
            .call(
                "GetQueueAttributes",
                json!({"QueueUrl": q.url, "AttributeNames": ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]}),
            )
            .await?;
        let n = |k: &str| {
            r["Attributes"][k]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(n("ApproximateNumberOfMessages") + n("ApproximateNumberOfMessagesNotVisible"))
    }
}

/// The event Lambda builds from a batch.
pub fn lambda_event(q: &Queue, batch: &[Message]) -> Value {
    let records: Vec<Value> = batch
        .iter()
        .map(|m| {
            json!({
                "messageId": m.id,
                "receiptHandle": m.receipt,
                "body": m.body,
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "0", "SenderId": "s3", "ApproximateFirstReceiveTimestamp": "0"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": q.arn,
                "awsRegion": "us-east-1",
            })
        })
        .collect();
    json!({ "Records": records })
}

/// The message ids a function's answer reports as failed (`ReportBatchItemFailures`).
pub fn failed_ids(response: &Value) -> Vec<String> {
    response["batchItemFailures"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Settles a batch the way the event source mapping does, given the function's outcome.
pub async fn settle(
    sqs: &Sqs,
    q: &Queue,
    batch: &[Message],
    outcome: Result<Value, String>,
) -> Result<BatchResult, String> {
    let mut r = BatchResult {
        received: batch.len(),
        ..BatchResult::default()
    };
    match outcome {
        Err(_) => {
            r.invocation_failed = true;
            r.failed = batch.len();
        }
        Ok(response) => {
            let failed = failed_ids(&response);
            for m in batch {
                if failed.contains(&m.id) {
                    r.failed += 1;
                } else {
                    sqs.delete(q, m).await?;
                    r.deleted += 1;
                }
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_is_what_lambda_sends_and_failures_are_read_back() {
        let q = Queue {
            name: "q".into(),
            url: "http://x/1/q".into(),
            arn: "arn:aws:sqs:us-east-1:1:q".into(),
        };
        let batch = vec![Message {
            id: "m1".into(),
            receipt: "r1".into(),
            body: "{}".into(),
        }];
        let e = lambda_event(&q, &batch);
        assert_eq!(e["Records"][0]["eventSource"], "aws:sqs");
        assert_eq!(e["Records"][0]["eventSourceARN"], "arn:aws:sqs:us-east-1:1:q");
        assert_eq!(e["Records"][0]["messageId"], "m1");
        assert_eq!(
            failed_ids(&json!({"batchItemFailures": [{"itemIdentifier": "m1"}]})),
            vec!["m1".to_string()]
        );
        assert!(failed_ids(&json!({})).is_empty());
    }
}
