//! Lambda payloads -> work items. Accepts S3 event notifications, the same wrapped in SQS
//! messages (optionally through SNS), and EventBridge "Object Created" and "Object Deleted"
//! events. Plain serde structs: the library core carries no Lambda types.
//!
//! Removals by a request (`ObjectRemoved:*`, EventBridge "Object Deleted" with reason
//! `DeleteObject`) are kept apart from lifecycle expirations (`LifecycleExpiration:*`, reason
//! `Lifecycle Expiration`): only the former can ever stand for a truncate at the source.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// One object to work on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEvent {
    pub bucket: String,
    /// The key, URL-decoded.
    pub key: String,
    pub size: Option<u64>,
    pub etag: Option<String>,
    pub sequencer: Option<String>,
    pub kind: ObjectEventKind,
    /// When it happened (S3's clock): the record's `eventTime`, or the EventBridge event's
    /// `time` (whole seconds).
    pub time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectEventKind {
    Created,
    /// Deleted by a request (DeleteObject, DeleteObjects, a delete marker created by one).
    Removed,
    /// Deleted by an S3 Lifecycle expiration rule (or, through EventBridge, for a reason other
    /// than a request): never a sign of anything at the source.
    Expired,
    Other,
}

/// A unit the caller acknowledges or fails as a whole: one SQS message, or the whole direct
/// invocation.
#[derive(Debug)]
pub struct Delivery {
    /// The SQS message id, for partial batch failure reports.
    pub message_id: Option<String>,
    /// The objects it names, or why it could not be read.
    pub objects: Result<Vec<ObjectEvent>>,
}

/// What a payload turned out to be.
#[derive(Debug)]
pub enum Payload {
    /// Direct S3 notifications or an EventBridge event: one delivery.
    Direct(Delivery),
    /// An SQS batch: one delivery per message.
    Sqs(Vec<Delivery>),
}

#[derive(Deserialize)]
struct S3Notification {
    #[serde(rename = "Records", default)]
    records: Vec<S3Record>,
}

#[derive(Deserialize)]
struct S3Record {
    #[serde(rename = "eventName", default)]
    event_name: String,
    #[serde(rename = "eventTime", default)]
    event_time: Option<String>,
    s3: S3Entity,
}

#[derive(Deserialize)]
struct S3Entity {
    bucket: S3Bucket,
    object: S3Object,
}

#[derive(Deserialize)]
struct S3Bucket {
    name: String,
}

#[derive(Deserialize)]
struct S3Object {
    key: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(rename = "eTag", default)]
    e_tag: Option<String>,
    #[serde(default)]
    sequencer: Option<String>,
}

#[derive(Deserialize)]
struct EventBridgeDetail {
    bucket: S3Bucket,
    object: EventBridgeObject,
    /// For "Object Deleted": `DeleteObject` or `Lifecycle Expiration`.
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct EventBridgeObject {
    key: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    sequencer: Option<String>,
}

/// Largest payload accepted (Lambda's own limit for asynchronous invocations is 256 KiB; SQS
/// batches can reach 6 MB).
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;

/// Reads a Lambda payload.
pub fn parse(payload: &Value) -> Result<Payload> {
    let records = payload.get("Records").and_then(Value::as_array);
    let is_sqs = records
        .and_then(|r| r.first())
        .and_then(|r| r.get("eventSource"))
        .and_then(Value::as_str)
        == Some("aws:sqs");
    if is_sqs {
        let records = records.map(Vec::as_slice).unwrap_or_default();
        let deliveries = records
            .iter()
            .map(|r| {
                sqs_delivery(
                    r.get("messageId").and_then(Value::as_str).map(str::to_string),
                    r.get("body").and_then(Value::as_str),
                )
            })
            .collect();
        return Ok(Payload::Sqs(deliveries));
    }
    Ok(Payload::Direct(Delivery {
        message_id: None,
        objects: parse_value(payload, 0),
    }))
}

/// One SQS message as a delivery, for callers that already hold the batch in typed form.
pub fn sqs_delivery(message_id: Option<String>, body: Option<&str>) -> Delivery {
    let objects = match body {
        Some(body) => parse_body(body),
        None => Err(event_err("an SQS record without a body")),
    };
    Delivery { message_id, objects }
}

fn event_err(reason: impl Into<String>) -> Error {
    Error::Event { reason: reason.into() }
}

/// The objects an SQS message body names (an S3 notification, possibly in an SNS envelope).
pub fn parse_body(body: &str) -> Result<Vec<ObjectEvent>> {
    if body.len() > MAX_PAYLOAD_BYTES {
        return Err(event_err(format!("a message body of {} bytes", body.len())));
    }
    let v: Value = serde_json::from_str(body).map_err(|e| event_err(format!("the message body is not JSON: {e}")))?;
    parse_value(&v, 0)
}

fn parse_value(v: &Value, depth: u8) -> Result<Vec<ObjectEvent>> {
    if depth > 2 {
        return Err(event_err("envelopes nested too deeply"));
    }
    // `s3:TestEvent`, sent once when notifications are set up: nothing to do.
    if v.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    // S3 -> SNS -> SQS: the notification is a string inside the SNS envelope.
    if v.get("Type").and_then(Value::as_str) == Some("Notification") {
        let msg = v
            .get("Message")
            .and_then(Value::as_str)
            .ok_or_else(|| event_err("an SNS notification without a Message"))?;
        let inner: Value =
            serde_json::from_str(msg).map_err(|e| event_err(format!("the SNS Message is not JSON: {e}")))?;
        return parse_value(&inner, depth + 1);
    }
    if v.get("Records").is_some() {
        let n: S3Notification =
            serde_json::from_value(v.clone()).map_err(|e| event_err(format!("not an S3 event notification: {e}")))?;
        return n
            .records
            .into_iter()
            .map(|r| {
                let key = decode_key(&r.s3.object.key)?;
                // Lifecycle expirations have names of their own (`LifecycleExpiration:Delete`,
                // `LifecycleExpiration:DeleteMarkerCreated`), never `ObjectRemoved:*`.
                let kind = if r.event_name.starts_with("ObjectCreated:") {
                    ObjectEventKind::Created
                } else if r.event_name.starts_with("ObjectRemoved:") {
                    ObjectEventKind::Removed
                } else if r.event_name.starts_with("LifecycleExpiration:") {
                    ObjectEventKind::Expired
                } else {
                    ObjectEventKind::Other
                };
                Ok(ObjectEvent {
                    bucket: r.s3.bucket.name,
                    key,
                    size: r.s3.object.size,
                    etag: r.s3.object.e_tag,
                    sequencer: r.s3.object.sequencer,
                    kind,
                    time: r.event_time.as_deref().and_then(parse_time),
                })
            })
            .collect();
    }
    if v.get("detail-type").is_some() && v.get("source").and_then(Value::as_str) == Some("aws.s3") {
        let dt = v.get("detail-type").and_then(Value::as_str).unwrap_or_default();
        let d: EventBridgeDetail = serde_json::from_value(v.get("detail").cloned().unwrap_or(Value::Null))
            .map_err(|e| event_err(format!("not an EventBridge S3 event: {e}")))?;
        // Only a deletion by a request is a removal; anything else ("Lifecycle Expiration", or
        // a reason this code does not know) must never be taken for a truncate.
        let kind = match (dt, d.reason.as_deref()) {
            ("Object Created", _) => ObjectEventKind::Created,
            ("Object Deleted", Some("DeleteObject")) => ObjectEventKind::Removed,
            ("Object Deleted", _) => ObjectEventKind::Expired,
            _ => ObjectEventKind::Other,
        };
        return Ok(vec![ObjectEvent {
            bucket: d.bucket.name,
            key: d.object.key,
            size: d.object.size,
            etag: d.object.etag,
            sequencer: d.object.sequencer,
            kind,
            time: v.get("time").and_then(Value::as_str).and_then(parse_time),
        }]);
    }
    Err(event_err(
        "neither an S3 notification, an SQS batch, an SNS envelope nor an EventBridge S3 event",
    ))
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

/// S3 notification keys are form-URL-encoded: `+` is a space, `%2B` a plus.
pub fn decode_key(raw: &str) -> Result<String> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| event_err(format!("object key `{raw}` is not valid percent-encoded UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s3(key: &str) -> Value {
        json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "dms"}, "object": {"key": key, "size": 10, "eTag": "abc", "sequencer": "01"}}}]})
    }

    fn objects(p: Payload) -> Vec<ObjectEvent> {
        match p {
            Payload::Direct(d) => d.objects.unwrap(),
            Payload::Sqs(_) => panic!("not direct"),
        }
    }

    #[test]
    fn keys_are_url_decoded() {
        assert_eq!(
            decode_key("hr/my+table/a%2Bb%2Fc.csv").unwrap(),
            "hr/my table/a+b/c.csv"
        );
        assert_eq!(decode_key("caf%C3%A9").unwrap(), "café");
        assert!(decode_key("%FF").is_err());
        let o = objects(parse(&s3("raw/hr/emp+x/LOAD00000001.csv")).unwrap());
        assert_eq!(o[0].key, "raw/hr/emp x/LOAD00000001.csv");
        assert_eq!(o[0].kind, ObjectEventKind::Created);
        assert_eq!(o[0].etag.as_deref(), Some("abc"));
    }

    #[test]
    fn sqs_batches_keep_bad_messages_apart() {
        let p = json!({"Records": [
            {"messageId": "m1", "eventSource": "aws:sqs", "body": s3("a/b/LOAD00000001.csv").to_string()},
            {"messageId": "m2", "eventSource": "aws:sqs", "body": "not json"},
            {"messageId": "m3", "eventSource": "aws:sqs", "body": json!({"Service":"Amazon S3","Event":"s3:TestEvent"}).to_string()},
            {"messageId": "m4", "eventSource": "aws:sqs", "body": json!({"Type":"Notification","Message": s3("x/y/LOAD00000002.csv").to_string()}).to_string()},
        ]});
        let Payload::Sqs(d) = parse(&p).unwrap() else { panic!() };
        assert_eq!(d.len(), 4);
        assert_eq!(d[0].objects.as_ref().unwrap()[0].key, "a/b/LOAD00000001.csv");
        assert!(d[1].objects.is_err());
        assert_eq!(d[1].message_id.as_deref(), Some("m2"));
        assert!(d[2].objects.as_ref().unwrap().is_empty());
        assert_eq!(d[3].objects.as_ref().unwrap()[0].key, "x/y/LOAD00000002.csv");
    }

    #[test]
    fn eventbridge_and_test_events() {
        let eb = json!({"version":"0","detail-type":"Object Created","source":"aws.s3",
            "detail":{"bucket":{"name":"dms"},"object":{"key":"hr/emp/LOAD00000001.csv","size":5,"etag":"e"}}});
        let o = objects(parse(&eb).unwrap());
        assert_eq!(
            (o[0].bucket.as_str(), o[0].key.as_str(), o[0].size),
            ("dms", "hr/emp/LOAD00000001.csv", Some(5))
        );
        assert!(objects(parse(&json!({"Service":"Amazon S3","Event":"s3:TestEvent"})).unwrap()).is_empty());
        let Payload::Direct(d) = parse(&json!({"hello": 1})).unwrap() else {
            panic!()
        };
        assert!(matches!(d.objects, Err(Error::Event { .. })));
    }

    #[test]
    fn removals_by_a_request_are_told_from_lifecycle_expirations() {
        let rec = |name: &str| {
            json!({"eventSource": "aws:s3", "eventName": name, "eventTime": "2024-05-29T08:15:27.440Z",
                "s3": {"bucket": {"name": "dms"}, "object": {"key": "hr/emp/LOAD00000001.csv", "sequencer": "01"}}})
        };
        let kinds: Vec<(ObjectEventKind, Option<String>)> = objects(
            parse(&json!({"Records": [
                rec("ObjectRemoved:Delete"),
                rec("ObjectRemoved:DeleteMarkerCreated"),
                rec("LifecycleExpiration:Delete"),
                rec("LifecycleExpiration:DeleteMarkerCreated"),
                rec("LifecycleTransition"),
            ]}))
            .unwrap(),
        )
        .into_iter()
        .map(|o| (o.kind, o.time.map(|t| t.to_rfc3339())))
        .collect();
        let t = Some("2024-05-29T08:15:27.440+00:00".to_string());
        assert_eq!(
            kinds,
            vec![
                (ObjectEventKind::Removed, t.clone()),
                (ObjectEventKind::Removed, t.clone()),
                (ObjectEventKind::Expired, t.clone()),
                (ObjectEventKind::Expired, t.clone()),
                (ObjectEventKind::Other, t),
            ]
        );
        // The same through SQS, and through SNS into SQS.
        let body = json!({"Records": [rec("ObjectRemoved:Delete")]}).to_string();
        let p = json!({"Records": [
            {"messageId": "m1", "eventSource": "aws:sqs", "body": body},
            {"messageId": "m2", "eventSource": "aws:sqs", "body": json!({"Type": "Notification", "Message": body}).to_string()},
        ]});
        let Payload::Sqs(d) = parse(&p).unwrap() else { panic!() };
        for m in d {
            let o = m.objects.unwrap();
            assert_eq!(o[0].kind, ObjectEventKind::Removed);
            assert_eq!(o[0].time.unwrap().timestamp_millis(), 1_716_970_527_440);
        }
    }

    #[test]
    fn eventbridge_deletions_count_only_with_reason_delete_object() {
        let eb = |reason: Option<&str>| {
            let mut v = json!({"version": "0", "detail-type": "Object Deleted", "source": "aws.s3",
                "time": "2024-05-29T08:15:27Z",
                "detail": {"bucket": {"name": "dms"}, "object": {"key": "hr/emp/LOAD00000001.csv", "sequencer": "01"},
                    "deletion-type": "Permanently Deleted"}});
            if let Some(r) = reason {
                v["detail"]["reason"] = json!(r);
            }
            objects(parse(&v).unwrap()).remove(0)
        };
        let o = eb(Some("DeleteObject"));
        assert_eq!(o.kind, ObjectEventKind::Removed);
        assert_eq!(o.key, "hr/emp/LOAD00000001.csv");
        assert_eq!(o.time.unwrap().timestamp(), 1_716_970_527);
        assert_eq!(eb(Some("Lifecycle Expiration")).kind, ObjectEventKind::Expired);
        // A reason not known to be a request is not evidence of anything.
        assert_eq!(eb(None).kind, ObjectEventKind::Expired);
        assert_eq!(eb(Some("Something New")).kind, ObjectEventKind::Expired);
    }
}
