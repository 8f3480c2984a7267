//! The queue calls reprocess makes: moving dead letters back to their source queue, and sending
//! missed files to the decode queue as the S3 notification S3 would have sent.

use async_trait::async_trait;
use dms2delta::error::{Error, Result, Stage};
use dms2delta::operations::reprocess::{Requeue, SourceObject};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::json;

/// One received message.
#[derive(Debug, Clone)]
pub struct Received {
    pub receipt: String,
    pub body: String,
}

/// SQS as reprocess uses it (a trait so the handler's tests can count calls).
#[async_trait]
pub trait Queues: Send + Sync {
    async fn receive(&self, url: &str) -> Result<Vec<Received>>;
    async fn send(&self, url: &str, body: &str) -> Result<()>;
    async fn delete(&self, url: &str, receipt: &str) -> Result<()>;
}

fn sqs_err(op: &str, url: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal {
        stage: Stage::Reprocess,
        context: format!("{op} {url}"),
        reason: e.to_string(),
        retryable: true,
    }
}

/// The AWS SDK's SQS client.
#[derive(Debug, Clone)]
pub struct Sqs {
    client: aws_sdk_sqs::Client,
}

impl Sqs {
    pub fn new(client: aws_sdk_sqs::Client) -> Sqs {
        Sqs { client }
    }
}

#[async_trait]
impl Queues for Sqs {
    async fn receive(&self, url: &str) -> Result<Vec<Received>> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            // Long enough to send the copy and delete the original.
            .visibility_timeout(60)
            .send()
            .await
            .map_err(|e| sqs_err("receive from", url, aws_sdk_sqs::error::DisplayErrorContext(e)))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                Some(Received {
                    receipt: m.receipt_handle()?.to_string(),
                    body: m.body()?.to_string(),
                })
            })
            .collect())
    }

    async fn send(&self, url: &str, body: &str) -> Result<()> {
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| sqs_err("send to", url, aws_sdk_sqs::error::DisplayErrorContext(e)))?;
        Ok(())
    }

    async fn delete(&self, url: &str, receipt: &str) -> Result<()> {
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| sqs_err("delete from", url, aws_sdk_sqs::error::DisplayErrorContext(e)))?;
        Ok(())
    }
}

/// What a redrive did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Redriven {
    /// Sent back to the source queue.
    pub moved: usize,
    /// Left in the dead-letter queue (`keep` said so).
    pub kept: usize,
}

/// Moves up to `max` messages from a dead-letter queue back to its source queue, except those
/// `keep` picks (they stay, invisible for the rest of this run). Each message is sent before it
/// is deleted, so a failure in between duplicates it (harmless: every stage is idempotent) and
/// never loses it.
pub async fn redrive(
    queues: &dyn Queues,
    dead_letter: &str,
    source: &str,
    max: usize,
    keep: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Redriven> {
    let mut r = Redriven::default();
    while r.moved + r.kept < max {
        let batch = queues.receive(dead_letter).await?;
        if batch.is_empty() {
            break;
        }
        for m in batch {
            if keep(&m.body) {
                r.kept += 1;
                continue;
            }
            queues.send(source, &m.body).await?;
            queues.delete(dead_letter, &m.receipt).await?;
            r.moved += 1;
        }
    }
    Ok(r)
}

// S3 notifications URL-encode keys (spaces as `+`); decode reads them the same way.
const KEY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// The S3 notification S3 would have sent for `o`.
pub fn s3_event_body(o: &SourceObject) -> String {
    let key = utf8_percent_encode(&o.key, KEY).to_string().replace("%20", "+");
    let mut object = json!({"key": key});
    if let Some(size) = o.size {
        object["size"] = json!(size);
    }
    if let Some(etag) = &o.etag {
        object["eTag"] = json!(etag.trim_matches('"'));
    }
    json!({"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "dms2delta-reprocess",
               "bucket": {"name": o.bucket, "arn": format!("arn:aws:s3:::{}", o.bucket)},
               "object": object},
    }]})
    .to_string()
}

/// Sends missed files to the decode queue.
pub struct ToDecodeQueue<'a> {
    pub queues: &'a dyn Queues,
    pub url: &'a str,
}

#[async_trait]
impl Requeue for ToDecodeQueue<'_> {
    async fn requeue(&self, o: &SourceObject) -> Result<bool> {
        self.queues.send(self.url, &s3_event_body(o)).await?;
        Ok(false)
    }
}

/// Queues in memory for the tests: what was sent, what is waiting.
#[cfg(test)]
pub(crate) mod memory {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Memory {
        pub waiting: Mutex<Vec<(String, String)>>,
        pub sent: Mutex<Vec<(String, String)>>,
        pub fail_send_after: Option<usize>,
        /// Received and not deleted: invisible until the test makes them visible again.
        pub in_flight: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Queues for Memory {
        async fn receive(&self, url: &str) -> Result<Vec<Received>> {
            let w = self.waiting.lock().unwrap();
            let mut in_flight = self.in_flight.lock().unwrap();
            // The body stands for the receipt handle: the tests' messages are all different.
            let out: Vec<Received> = w
                .iter()
                .filter(|(u, b)| u == url && !in_flight.contains(b))
                .take(10)
                .map(|(_, b)| Received {
                    receipt: b.clone(),
                    body: b.clone(),
                })
                .collect();
            in_flight.extend(out.iter().map(|r| r.body.clone()));
            Ok(out)
        }
        async fn send(&self, url: &str, body: &str) -> Result<()> {
            let mut sent = self.sent.lock().unwrap();
            if self.fail_send_after.is_some_and(|n| sent.len() >= n) {
                return Err(sqs_err("send to", url, "throttled"));
            }
            sent.push((url.to_string(), body.to_string()));
            Ok(())
        }
        async fn delete(&self, url: &str, receipt: &str) -> Result<()> {
            let mut w = self.waiting.lock().unwrap();
            let i = w.iter().position(|(u, b)| u == url && b == receipt).unwrap();
            w.remove(i);
            self.in_flight.lock().unwrap().retain(|b| b != receipt);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::Memory;
    use super::*;
    use dms2delta::events::{parse, Payload};

    #[test]
    fn the_synthetic_event_reads_back_as_the_same_object() {
        let o = SourceObject {
            bucket: "dms".into(),
            key: "dms/mysql/shop/order items/LOAD0000000 1+2=3.csv".into(),
            etag: Some("\"abc\"".into()),
            size: Some(12),
        };
        let Payload::Direct(d) = parse(&serde_json::from_str(&s3_event_body(&o)).unwrap()).unwrap() else {
            panic!("not a direct S3 event")
        };
        let objects = d.objects.unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(
            (objects[0].bucket.as_str(), objects[0].key.as_str()),
            ("dms", o.key.as_str())
        );
        assert_eq!(objects[0].etag.as_deref(), Some("abc"));
        assert_eq!(objects[0].size, Some(12));
    }

    #[tokio::test]
    async fn redrive_moves_every_dead_letter_and_stops_at_the_bound() {
        let q = Memory::default();
        for i in 0..25 {
            q.waiting.lock().unwrap().push(("dlq".into(), format!("m{i}")));
        }
        q.waiting.lock().unwrap().push(("other".into(), "x".into()));
        let none = |_: &str| false;
        assert_eq!(redrive(&q, "dlq", "src", 20, &none).await.unwrap().moved, 20);
        assert_eq!(redrive(&q, "dlq", "src", 100, &none).await.unwrap().moved, 5);
        let sent = q.sent.lock().unwrap();
        assert_eq!(sent.len(), 25);
        assert!(sent.iter().all(|(u, _)| u == "src"));
        assert_eq!(
            q.waiting.lock().unwrap().len(),
            1,
            "only the other queue's message is left"
        );
    }

    #[tokio::test]
    async fn messages_picked_to_stay_stay() {
        let q = Memory::default();
        for b in ["good-1", "bad-1", "good-2"] {
            q.waiting.lock().unwrap().push(("dlq".into(), b.into()));
        }
        let r = redrive(&q, "dlq", "src", 100, &|b: &str| b.starts_with("bad"))
            .await
            .unwrap();
        assert_eq!(r, Redriven { moved: 2, kept: 1 });
        let waiting = q.waiting.lock().unwrap();
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting[0].1, "bad-1");
    }

    #[tokio::test]
    async fn a_failed_send_keeps_the_dead_letter() {
        let q = Memory {
            fail_send_after: Some(3),
            ..Memory::default()
        };
        for i in 0..5 {
            q.waiting.lock().unwrap().push(("dlq".into(), format!("m{i}")));
        }
        assert!(redrive(&q, "dlq", "src", 100, &|_: &str| false).await.is_err());
        assert_eq!(q.sent.lock().unwrap().len(), 3);
        assert_eq!(
            q.waiting.lock().unwrap().len(),
            2,
            "unsent messages stay in the dead-letter queue"
        );
    }
}
