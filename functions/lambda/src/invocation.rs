//! Invocation payloads, typed where the shape allows.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use dms2delta::events::{parse, sqs_delivery, Payload};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// What a function is invoked with.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// An SQS batch (`Records[0].eventSource` is `aws:sqs`): each message is acknowledged or
    /// failed on its own.
    Sqs(SqsEvent),
    /// An S3 notification or an EventBridge event invoking the function directly (or a payload
    /// that is none of those, which [`Invocation::payload`] reports as such).
    Direct(Value),
}

impl Invocation {
    /// The deliveries it holds, each with the objects its message names.
    pub fn payload(&self) -> dms2delta::Result<Payload> {
        match self {
            Invocation::Sqs(batch) => Ok(Payload::Sqs(
                batch
                    .records
                    .iter()
                    .map(|m| sqs_delivery(m.message_id.clone(), m.body.as_deref()))
                    .collect(),
            )),
            Invocation::Direct(v) => parse(v),
        }
    }

    pub fn is_sqs(&self) -> bool {
        matches!(self, Invocation::Sqs(_))
    }
}

fn looks_like_sqs(v: &Value) -> bool {
    v.get("Records")
        .and_then(Value::as_array)
        .and_then(|r| r.first())
        .and_then(|r| r.get("eventSource"))
        .and_then(Value::as_str)
        == Some("aws:sqs")
}

impl From<Value> for Invocation {
    fn from(v: Value) -> Invocation {
        if looks_like_sqs(&v) {
            if let Ok(batch) = SqsEvent::deserialize(&v) {
                return Invocation::Sqs(batch);
            }
            // A batch the typed reader refuses (a field of an unexpected type) is still read
            // message by message by the JSON reader, so one odd message fails alone, as before.
        }
        Invocation::Direct(v)
    }
}

impl<'de> Deserialize<'de> for Invocation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Invocation, D::Error> {
        Value::deserialize(d).map(Invocation::from)
    }
}

/// The answer to an SQS batch: the messages to deliver again.
pub fn batch_response(failed: impl IntoIterator<Item = String>) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for id in failed {
        let mut f = BatchItemFailure::default();
        f.item_identifier = id;
        response.batch_item_failures.push(f);
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn sample(name: &str) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events").join(name);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn every_sample_event_reads_as_before() {
        // The typed reader must give exactly what the JSON reader gave for every shape the
        // functions accept.
        let mut sqs = 0;
        let mut seen = 0;
        for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let v = sample(&name);
            let typed: Invocation = serde_json::from_value(v.clone()).unwrap();
            sqs += usize::from(typed.is_sqs());
            seen += 1;
            let before = format!("{:?}", parse(&v));
            let now = format!("{:?}", typed.payload());
            assert_eq!(before, now, "{name}");
        }
        assert!(seen >= 15, "{seen} sample events");
        assert!(sqs >= 4, "{sqs} SQS batches among the samples");
    }

    #[test]
    fn an_sqs_batch_the_typed_reader_refuses_is_still_read_message_by_message() {
        let v = json!({"Records": [
            {"messageId": "m1", "eventSource": "aws:sqs", "body": 7},
            {"messageId": "m2", "eventSource": "aws:sqs", "body": "{\"Service\":\"Amazon S3\",\"Event\":\"s3:TestEvent\"}"},
        ]});
        let i = Invocation::from(v);
        assert!(!i.is_sqs());
        let Payload::Sqs(d) = i.payload().unwrap() else {
            panic!("not a batch")
        };
        assert!(d[0].objects.is_err());
        assert_eq!(d[1].objects.as_ref().unwrap().len(), 0);
    }

    #[test]
    fn batch_responses_name_the_failed_messages() {
        let r = batch_response(["a".to_string(), "c".to_string()]);
        assert_eq!(
            serde_json::to_value(r).unwrap(),
            json!({"batchItemFailures": [{"itemIdentifier": "a"}, {"itemIdentifier": "c"}]})
        );
        assert_eq!(
            serde_json::to_value(batch_response([])).unwrap(),
            json!({"batchItemFailures": []})
        );
    }
}
