#!/usr/bin/env python3
"""Writes the sample Lambda payloads in this folder (see README.md).

    python3 events/generate.py          # rewrite the JSON files
    python3 events/generate.py --check  # fail if a JSON file differs from what would be written

Object sizes and ETags come from the real files under events/data/dms-bucket/<key> when they
exist (ETag = MD5 of the content, as S3 computes it for a single-part upload); otherwise the
placeholder values below are used. Run it again after adding or changing a data file, so the
events, the SQS md5OfBody values and the files stay consistent.

Everything else is fixed (seeded), so the output is reproducible: ids, request ids, receipt
handles and signatures are made up but have the shape and length of real ones. Only the standard
library is used.
"""

import base64
import hashlib
import json
import random
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote_plus

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

REGION = "us-east-1"
ACCOUNT = "123456789012"
BUCKET = "dms-bucket"
BUCKET_OWNER = "A2QK8VJ9XT4EHM"
# DMS writes with the S3 endpoint's service access role; S3 reports the assumed-role session.
DMS_PRINCIPAL = "AWS:AROAY7Q4EXAMPLEDMS3W:dms-s3-target-mysql-shop"
DMS_SOURCE_IP = "10.20.3.117"
# A person creating a "folder" in the S3 console.
CONSOLE_PRINCIPAL = "AWS:AIDAY7Q4EXAMPLEOPS7Q"
CONSOLE_SOURCE_IP = "203.0.113.54"
QUEUE_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:dms2delta-DecodeQueue-Hq3T9xLmW2pA"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:dms-bucket-object-created"
# The notification configuration ids, as named in docs/deploy.md.
CONFIG_ID_SQS = "dms2delta-decode"
CONFIG_ID_SNS = "dms2delta-decode-sns"
CONFIG_ID_LAMBDA = "dms2delta-decode-direct"
# SenderId S3 and SNS put on the SQS messages they send (us-east-1).
S3_SENDER_ID = "AIDAJHIPRHEMV73VRJEBU"
SNS_SENDER_ID = "AIDAIT2UOQQY3AUEKVGXU"
# Made up, with the shape of the others: the SenderId EventBridge's messages carry was not seen.
EVENTBRIDGE_SENDER_ID = "AIDAIE6VAXUQU2DKHOZ3M"
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"

# key -> (placeholder size, event time). Times follow the CDC file names (UTC) by about a second.
OBJECTS = {
    "load": ("dms/mysql/shop/customers/LOAD00000001.csv", 18734, "2024-05-28T19:48:03.221Z"),
    "cdc": ("dms/mysql/shop/customers/20240528-195141380.csv", 1187, "2024-05-28T19:51:42.107Z"),
    "parquet": ("dms/mysql/shop/order items/20240528-195142001.parquet", 6342, "2024-05-28T19:51:43.012Z"),
    "gz": ("dms/mysql/shop/customers/20240528-195143000.csv.gz", 512, "2024-05-28T19:51:43.874Z"),
    "zero": ("dms/mysql/shop/customers/20240528-195144000.csv", 0, "2024-05-28T19:51:44.651Z"),
    "folder": ("dms/mysql/shop/customers/", 0, "2024-05-28T19:40:12.530Z"),
}
TEST_EVENT_TIME = "2024-05-28T19:30:02.172Z"
DELETE_TIME = "2024-05-29T08:15:27.440Z"

rng = random.Random(20240528)


def token(n, alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"):
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64(nbytes):
    return base64.b64encode(bytes(rng.getrandbits(8) for _ in range(nbytes))).decode()


def new_uuid():
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def epoch_ms(ts):
    return int(datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp() * 1000)


def sequencer(ts):
    """S3 sequencers: hex, the first digits being the event's Unix time in seconds."""
    return f"00{epoch_ms(ts) // 1000:08X}{rng.getrandbits(32):08X}"


def request_ids():
    # x-amz-request-id: 16 characters; x-amz-id-2: 76 base64 characters.
    return token(16), b64(57)


def size_and_etag(key, placeholder_size):
    if placeholder_size == 0:
        return 0, EMPTY_MD5
    f = DATA / BUCKET / key
    if f.is_file():
        content = f.read_bytes()
        return len(content), hashlib.md5(content).hexdigest()
    # A stable made-up ETag per key.
    return placeholder_size, hashlib.md5(f"placeholder:{key}".encode()).hexdigest()


class Put:
    """One PutObject, described the same way by every event shape."""

    def __init__(self, name, event_name="ObjectCreated:Put", principal=DMS_PRINCIPAL, source_ip=DMS_SOURCE_IP):
        key, placeholder, ts = OBJECTS[name]
        self.key, self.time = key, ts
        self.size, self.etag = size_and_etag(key, placeholder)
        self.sequencer = sequencer(ts)
        self.request_id, self.id2 = request_ids()
        self.event_name, self.principal, self.source_ip = event_name, principal, source_ip

    def s3_record(self, configuration_id):
        return {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": REGION,
            "eventTime": self.time,
            "eventName": self.event_name,
            "userIdentity": {"principalId": self.principal},
            "requestParameters": {"sourceIPAddress": self.source_ip},
            "responseElements": {"x-amz-request-id": self.request_id, "x-amz-id-2": self.id2},
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": configuration_id,
                "bucket": {
                    "name": BUCKET,
                    "ownerIdentity": {"principalId": BUCKET_OWNER},
                    "arn": f"arn:aws:s3:::{BUCKET}",
                },
                "object": {
                    # S3 form-URL-encodes keys in notifications: space -> `+`, `/` kept.
                    "key": quote_plus(self.key, safe="/"),
                    "size": self.size,
                    "eTag": self.etag,
                    "sequencer": self.sequencer,
                },
            },
        }

    def eventbridge(self):
        return {
            "version": "0",
            "id": new_uuid(),
            "detail-type": "Object Created",
            "source": "aws.s3",
            "account": ACCOUNT,
            "time": self.time[:19] + "Z",
            "region": REGION,
            "resources": [f"arn:aws:s3:::{BUCKET}"],
            "detail": {
                "version": "0",
                "bucket": {"name": BUCKET},
                # EventBridge keys are not URL-encoded (unverified; see docs/dms-s3-format.md).
                "object": {"key": self.key, "size": self.size, "etag": self.etag, "sequencer": self.sequencer},
                "request-id": self.request_id,
                "requester": ACCOUNT,
                "source-ip-address": self.source_ip,
                "reason": "PutObject",
            },
        }


def removed_record(name, event_name="ObjectRemoved:Delete", principal=DMS_PRINCIPAL, source_ip=DMS_SOURCE_IP):
    key, _, _ = OBJECTS[name]
    request_id, id2 = request_ids()
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": DELETE_TIME,
        "eventName": event_name,
        "userIdentity": {"principalId": principal},
        "requestParameters": {"sourceIPAddress": source_ip},
        "responseElements": {"x-amz-request-id": request_id, "x-amz-id-2": id2},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": CONFIG_ID_LAMBDA,
            "bucket": {
                "name": BUCKET,
                "ownerIdentity": {"principalId": BUCKET_OWNER},
                "arn": f"arn:aws:s3:::{BUCKET}",
            },
            # Delete events carry neither size nor eTag.
            "object": {"key": quote_plus(key, safe="/"), "sequencer": sequencer(DELETE_TIME)},
        },
    }


def removed_eventbridge(name, reason, requester, source_ip):
    """EventBridge "Object Deleted" of an unversioned object: no size, no ETag, no version id."""
    key, _, _ = OBJECTS[name]
    request_id, _ = request_ids()
    return {
        "version": "0",
        "id": new_uuid(),
        "detail-type": "Object Deleted",
        "source": "aws.s3",
        "account": ACCOUNT,
        # EventBridge times are whole seconds.
        "time": DELETE_TIME[:19] + "Z",
        "region": REGION,
        "resources": [f"arn:aws:s3:::{BUCKET}"],
        "detail": {
            "version": "0",
            "bucket": {"name": BUCKET},
            "object": {"key": key, "sequencer": sequencer(DELETE_TIME)},
            "request-id": request_id,
            "requester": requester,
            "source-ip-address": source_ip,
            "reason": reason,
            "deletion-type": "Permanently Deleted",
        },
    }


def test_event(ts):
    request_id, id2 = request_ids()
    return {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": ts,
        "Bucket": BUCKET,
        "RequestId": request_id,
        "HostId": id2,
    }


def compact(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def sqs_record(body, sent_ms, sender_id):
    return {
        "messageId": new_uuid(),
        "receiptHandle": "AQEB" + b64(240).rstrip("="),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": str(sent_ms),
            "SenderId": sender_id,
            "ApproximateFirstReceiveTimestamp": str(sent_ms + rng.randint(3, 40)),
        },
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": REGION,
    }


def sns_envelope(message, ts):
    """SNS -> SQS without raw message delivery: SNS's own pretty-printed JSON, `" : "` and all."""
    sub = new_uuid()
    fields = [
        ("Type", "Notification"),
        ("MessageId", new_uuid()),
        ("TopicArn", TOPIC_ARN),
        ("Subject", "Amazon S3 Notification"),
        ("Message", message),
        ("Timestamp", ts),
        ("SignatureVersion", "1"),
        ("Signature", b64(256)),
        ("SigningCertURL", f"https://sns.{REGION}.amazonaws.com/SimpleNotificationService-{rng.getrandbits(128):032x}.pem"),
        (
            "UnsubscribeURL",
            f"https://sns.{REGION}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={TOPIC_ARN}:{sub}",
        ),
    ]
    return "{\n" + ",\n".join(f"  {json.dumps(k)} : {json.dumps(v)}" for k, v in fields) + "\n}"


def build():
    load = Put("load")
    cdc = Put("cdc")
    parquet = Put("parquet")
    gz = Put("gz")
    zero = Put("zero")
    folder = Put("folder", principal=CONSOLE_PRINCIPAL, source_ip=CONSOLE_SOURCE_IP)

    files = {}
    files["s3-put.json"] = {"Records": [load.s3_record(CONFIG_ID_LAMBDA)]}
    files["s3-put-url-encoded.json"] = {"Records": [parquet.s3_record(CONFIG_ID_LAMBDA)]}
    files["s3-test-event.json"] = test_event(TEST_EVENT_TIME)
    files["s3-folder-marker.json"] = {"Records": [folder.s3_record(CONFIG_ID_LAMBDA)]}
    files["s3-zero-byte.json"] = {"Records": [zero.s3_record(CONFIG_ID_LAMBDA)]}
    files["s3-object-removed.json"] = {"Records": [removed_record("load")]}
    files["eventbridge-object-created.json"] = load.eventbridge()

    # S3 -> SQS: the test event S3 sends when the notification is configured sits in the same
    # batch as two real notifications (redelivered after a visibility timeout, say).
    batch = []
    for body, ts in [
        (compact({"Records": [cdc.s3_record(CONFIG_ID_SQS)]}), cdc.time),
        (compact(test_event("2024-05-28T19:51:40.918Z")), "2024-05-28T19:51:40.918Z"),
        (compact({"Records": [gz.s3_record(CONFIG_ID_SQS)]}), gz.time),
    ]:
        batch.append(sqs_record(body, epoch_ms(ts) + rng.randint(20, 90), S3_SENDER_ID))
    files["sqs-batch.json"] = {"Records": batch}

    # S3 -> SNS -> SQS, raw message delivery off.
    # The same PUT as the first SQS message (same request id, ETag, sequencer): only the
    # notification configuration that routed it differs.
    message = compact({"Records": [cdc.s3_record(CONFIG_ID_SNS)]})
    sns_ts = datetime.fromtimestamp((epoch_ms(cdc.time) + 61) / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    body = sns_envelope(message, sns_ts)
    files["sqs-sns-wrapped.json"] = {"Records": [sqs_record(body, epoch_ms(sns_ts) + 15, SNS_SENDER_ID)]}

    # The reprocess function: a dead-letter alarm through SNS (entering and leaving ALARM), the
    # periodic reconcile, and a request by hand.
    files["reprocess-alarm.json"] = alarm_event("ALARM", "OK", "2024-05-28T19:56:12.345Z")
    files["reprocess-alarm-ok.json"] = alarm_event("OK", "ALARM", "2024-05-28T20:09:12.345Z")
    files["reprocess-schedule.json"] = {
        "version": "0",
        "id": new_uuid(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": "2024-05-28T20:00:00Z",
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/dms2delta-ReprocessSchedule-{token(12)}"],
        "detail": {},
    }
    files["reprocess-manual.json"] = {"table": "mysql.shop.customers", "since": "2024-05-28T00:00:00Z", "dry_run": True}

    # Added later, after everything above so that the seeded values of the older files stay.
    # S3 -> EventBridge -> SQS, the default for a DMS bucket the stack does not create: the body
    # is the EventBridge event itself (DecodeEventRule has no input transformer).
    eb = cdc.eventbridge()
    eb_body = compact(eb)
    files["sqs-eventbridge.json"] = {
        "Records": [sqs_record(eb_body, epoch_ms(cdc.time) + rng.randint(300, 900), EVENTBRIDGE_SENDER_ID)]
    }
    # What EventBridge Scheduler delivers to reprocess: template.yaml's ReprocessSchedule input
    # with the scheduler's context attributes filled in.
    files["reprocess-scheduler.json"] = {
        "version": "0",
        "id": new_uuid(),
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "time": "2024-05-28T18:00:00Z",
        "resources": [f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/default/dms2delta-ReprocessSchedule-{token(12)}"],
        "detail": {},
    }
    # A DMS task failure as EventBridge emits it; DmsTaskStateRule sends it to AlarmTopic (for
    # the e-mail), and reprocess's subscription filter keeps it from reprocess.
    files["dms-task-failed.json"] = {
        "version": "0",
        "id": new_uuid(),
        "detail-type": "DMS Replication Task State Change",
        "source": "aws.dms",
        "account": ACCOUNT,
        "time": "2024-05-28T21:14:09Z",
        "region": REGION,
        "resources": [f"arn:aws:dms:{REGION}:{ACCOUNT}:task:{token(26)}"],
        "detail": {
            "type": "REPLICATION_TASK",
            "category": "Failure",
            "eventType": "REPLICATION_TASK_FAILED",
            "eventId": "DMS-EVENT-0078",
            "resourceLink": f"https://console.aws.amazon.com/dms/v2/home?region={REGION}#taskDetails/dms-s3-target-mysql-shop",
            "detailMessage": "Last Error Stream Component Fatal error. Task error notification received from subtask 0, thread 0",
        },
    }
    # Removals of the LOAD file, added after everything above: DMS removing it on a source
    # truncate (DeleteObject) through EventBridge, and a lifecycle rule expiring it, as a direct
    # S3 notification (event type s3:LifecycleExpiration:Delete, principal as in the S3 user
    # guide's example) and through EventBridge (reason "Lifecycle Expiration"; its requester and
    # source address are unverified).
    files["eventbridge-object-deleted.json"] = removed_eventbridge("load", "DeleteObject", ACCOUNT, DMS_SOURCE_IP)
    files["s3-lifecycle-expiration.json"] = {
        "Records": [
            removed_record(
                "load",
                event_name="LifecycleExpiration:Delete",
                principal="s3.amazonaws.com",
                source_ip="s3.amazonaws.com",
            )
        ]
    }
    files["eventbridge-lifecycle-expiration.json"] = removed_eventbridge(
        "load", "Lifecycle Expiration", "s3.amazonaws.com", "s3.amazonaws.com"
    )
    # The same task starting, and stopping once its full load finished, added last with fixed
    # ids so nothing above changes. DmsTaskStateRule sends the stop to AlarmTopic, and
    # DmsTaskStoppedRule to reprocess, which commits the task's sources' waiting tables (a
    # reload's marker settles there when DMS reports its table loaded). The event ids and the
    # started message follow the DMS event reference's table; the stop message's "Stop Reason"
    # wording is taken from public event patterns, not a captured event (unverified).
    task_arn = files["dms-task-failed.json"]["resources"][0]

    def task_event(event_id, time, category, event_type, dms_id, message):
        return {
            "version": "0",
            "id": event_id,
            "detail-type": "DMS Replication Task State Change",
            "source": "aws.dms",
            "account": ACCOUNT,
            "time": time,
            "region": REGION,
            "resources": [task_arn],
            "detail": {
                "type": "REPLICATION_TASK",
                "category": category,
                "eventType": event_type,
                "eventId": dms_id,
                "resourceLink": f"https://console.aws.amazon.com/dms/v2/home?region={REGION}#taskDetails/dms-s3-target-mysql-shop",
                "detailMessage": message,
            },
        }

    files["dms-task-started.json"] = task_event(
        "6b0e3f52-8f0c-4d3e-9d8a-2f4c1e7a5b10",
        "2024-05-28T19:40:02Z",
        "StateChange",
        "REPLICATION_TASK_STARTED",
        "DMS-EVENT-0069",
        "Replication task started, with flag = fresh start",
    )
    files["dms-task-stopped.json"] = task_event(
        "0c9d7a61-3e2b-4f58-a1c6-9e8b7d6f5a42",
        "2024-05-28T20:02:47Z",
        "StateChange",
        "REPLICATION_TASK_STOPPED",
        "DMS-EVENT-0079",
        "Replication task has stopped. Stop Reason FULL_LOAD_ONLY_FINISHED.",
    )
    return files


ALARM_TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:dms2delta-AlarmTopic-7QJ2XKD0P1LM"
ALARM_NAME = "dms2delta-DecodeDeadLetters"


def alarm_event(new, old, ts):
    """A CloudWatch alarm state change, as SNS delivers it to a subscribed Lambda function."""
    stamp = ts.replace("Z", "+0000")
    reason = (
        "Threshold Crossed: 1 out of the last 1 datapoints [1.0 (28/05/24 19:55:00)] was greater than or equal to the threshold (1.0) (minimum 1 datapoint for OK -> ALARM transition)."
        if new == "ALARM"
        else "Threshold Crossed: 1 out of the last 1 datapoints [0.0 (28/05/24 20:08:00)] was not greater than or equal to the threshold (1.0) (minimum 1 datapoint for ALARM -> OK transition)."
    )
    alarm = {
        "AlarmName": ALARM_NAME,
        "AlarmDescription": "Messages reached the decode dead-letter queue: runbook in docs/runbook.md.",
        "AWSAccountId": ACCOUNT,
        "AlarmConfigurationUpdatedTimestamp": "2024-05-20T08:12:44.870+0000",
        "NewStateValue": new,
        "NewStateReason": reason,
        "StateChangeTime": stamp,
        "Region": "US East (N. Virginia)",
        "AlarmArn": f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{ALARM_NAME}",
        "OldStateValue": old,
        "OKActions": [ALARM_TOPIC_ARN],
        "AlarmActions": [ALARM_TOPIC_ARN],
        "InsufficientDataActions": [],
        "Trigger": {
            "MetricName": "ApproximateNumberOfMessagesVisible",
            "Namespace": "AWS/SQS",
            "StatisticType": "Statistic",
            "Statistic": "MAXIMUM",
            "Unit": None,
            "Dimensions": [{"value": "dms2delta-DecodeDeadLetterQueue-Hq3T9xLmW2pA", "name": "QueueName"}],
            "Period": 60,
            "EvaluationPeriods": 1,
            "DatapointsToAlarm": 1,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "Threshold": 1.0,
            "TreatMissingData": "notBreaching",
            "EvaluateLowSampleCountPercentile": "",
        },
    }
    sub = new_uuid()
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": f"{ALARM_TOPIC_ARN}:{sub}",
                "Sns": {
                    "Type": "Notification",
                    "MessageId": new_uuid(),
                    "TopicArn": ALARM_TOPIC_ARN,
                    "Subject": f'{new}: "{ALARM_NAME}" in US East (N. Virginia)',
                    "Message": compact(alarm),
                    "Timestamp": ts,
                    "SignatureVersion": "1",
                    "Signature": b64(256),
                    "SigningCertUrl": f"https://sns.{REGION}.amazonaws.com/SimpleNotificationService-{rng.getrandbits(128):032x}.pem",
                    "UnsubscribeUrl": f"https://sns.{REGION}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={ALARM_TOPIC_ARN}:{sub}",
                    "MessageAttributes": {},
                },
            }
        ]
    }


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, value in build().items():
        text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
        path = HERE / name
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote events/{name}")
    if stale:
        print("out of date (run python3 events/generate.py): " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
