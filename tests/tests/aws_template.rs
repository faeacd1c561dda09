//! The CloudFormation template's IAM statements: no wildcard action, no unscoped resource, exactly the calls the code makes.
//!
//! Reads `infra/aws/fabric.yaml` (long-form intrinsics, so plain YAML) and
//! walks every policy document in it: role trust policies, role policies and
//! the key policy. Then compares each component's grants with the AWS SDK
//! calls its source makes, so a new call without a grant (or a grant no call
//! uses) fails here rather than in production.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Resources allowed to be `"*"`, and why. Anything else must name the
/// stack's own resources (`Ref`/`Fn::GetAtt`) or an ARN under the prefix.
const STAR_RESOURCE_ACTIONS: &[(&str, &str)] = &[(
    "sqs:ListQueues",
    "ListQueues supports no resource-level permission",
)];

/// Calls the code makes only when it creates what it needs (`create_resources`,
/// `fabric up --backend aws`: tables, TTL, the KMS key and its alias, the
/// first master key version) or when an operator adds a master key version
/// (`fabric master-key add`): never granted to a component's role.
const CREATION_ONLY: &[&str] = &[
    "dynamodb:CreateTable",
    "dynamodb:UpdateTimeToLive",
    "kms:CreateAlias",
    "kms:CreateKey",
    "kms:DescribeKey",
    "kms:EnableKeyRotation",
    "kms:GenerateDataKey",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn template() -> Value {
    let text = std::fs::read_to_string(root().join("infra/aws/fabric.yaml")).expect("template");
    serde_saphyr::from_str(&text).expect("the template is plain YAML")
}

/// A value that is one item or a list of them, as IAM allows.
fn list(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

/// Every policy document in the template: (where, document, is a key policy).
fn documents(t: &Value) -> Vec<(String, Value, bool)> {
    let mut out = Vec::new();
    let resources = t["Resources"].as_object().expect("Resources");
    for (name, r) in resources {
        let props = &r["Properties"];
        match r["Type"].as_str().unwrap_or_default() {
            "AWS::IAM::Role" => {
                for (n, doc) in variants(&props["AssumeRolePolicyDocument"])
                    .into_iter()
                    .enumerate()
                {
                    out.push((format!("{name} trust {}", n + 1), doc, false));
                }
                assert!(
                    props.get("Policies").is_none() && props.get("ManagedPolicyArns").is_none(),
                    "{name}: a role's permissions are its RolePolicy resource, checked here"
                );
            }
            "AWS::IAM::RolePolicy" | "AWS::IAM::Policy" | "AWS::IAM::ManagedPolicy" => {
                out.push((name.clone(), props["PolicyDocument"].clone(), false));
            }
            "AWS::KMS::Key" => out.push((name.clone(), props["KeyPolicy"].clone(), true)),
            other => assert!(
                !other.starts_with("AWS::IAM::"),
                "{name}: {other} is not checked; teach this test about it"
            ),
        }
    }
    out
}

/// Every form a policy document may take: both branches of an `Fn::If`, and
/// a document given as JSON text (`Fn::Sub` of a string; its `${...}` stay
/// as they are, which is valid JSON).
fn variants(doc: &Value) -> Vec<Value> {
    if let Some(Value::Array(branches)) = doc.get("Fn::If") {
        return branches.iter().skip(1).flat_map(variants).collect();
    }
    if let Some(Value::String(text)) = doc.get("Fn::Sub") {
        let parsed: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("a policy document as JSON text: {e}: {text}"));
        return vec![parsed];
    }
    vec![doc.clone()]
}

/// Why a resource entry is not scoped to this stack, if it is not.
fn unscoped(resource: &Value, actions: &[&str], key_policy: bool) -> Option<String> {
    match resource {
        Value::String(s) if s == "*" => {
            // In a key policy, "*" is the key itself.
            if key_policy {
                return None;
            }
            let allowed: BTreeSet<&str> = STAR_RESOURCE_ACTIONS.iter().map(|(a, _)| *a).collect();
            let bad: Vec<_> = actions.iter().filter(|a| !allowed.contains(*a)).collect();
            (!bad.is_empty()).then(|| format!("\"*\" for {bad:?}, which are not on the list"))
        }
        Value::String(s) => Some(format!(
            "a literal resource {s:?}: name the stack's resources"
        )),
        Value::Object(f) if f.contains_key("Fn::GetAtt") || f.contains_key("Ref") => None,
        Value::Object(f) => {
            let Some(Value::String(arn)) = f.get("Fn::Sub") else {
                return Some(format!("{resource}: not a Ref, GetAtt or Sub"));
            };
            let parts = arn_fields(arn);
            let [arn_, partition, _service, region, account, rest] = parts[..] else {
                return Some(format!("{arn}: not an ARN"));
            };
            if arn_ != "arn"
                || partition != "${AWS::Partition}"
                || region != "${AWS::Region}"
                || account != "${AWS::AccountId}"
            {
                return Some(format!(
                    "{arn}: not this stack's partition, region and account"
                ));
            }
            // A wildcard only after the fabric's prefix.
            match rest.find('*') {
                Some(at) if !rest[..at].contains("${Prefix}") => {
                    Some(format!("{arn}: a wildcard before the prefix"))
                }
                _ => None,
            }
        }
        other => Some(format!("{other}: not a resource")),
    }
}

/// An ARN's six fields; `:` inside `${...}` (as in `${AWS::Region}`) does not split.
fn arn_fields(arn: &str) -> Vec<&str> {
    let mut fields = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in arn.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ':' if depth == 0 && fields.len() < 5 => {
                fields.push(&arn[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    fields.push(&arn[start..]);
    fields
}

#[test]
fn no_statement_grants_a_wildcard_action_or_an_unscoped_resource() {
    let t = template();
    let docs = documents(&t);
    assert!(
        docs.len() >= 7,
        "three roles' trust, three policies, the key"
    );
    let mut problems = Vec::new();
    for (place, doc, key_policy) in docs {
        let statements = list(&doc["Statement"]);
        assert!(!statements.is_empty(), "{place}: no statement");
        for st in statements {
            let sid = st["Sid"].as_str().unwrap_or("(no Sid)");
            let at = format!("{place} / {sid}");
            for forbidden in ["NotAction", "NotResource", "NotPrincipal"] {
                if st.get(forbidden).is_some() {
                    problems.push(format!("{at}: {forbidden} grants by exclusion"));
                }
            }
            if st["Effect"] != "Allow" {
                continue;
            }
            let actions: Vec<&str> = list(&st["Action"])
                .iter()
                .filter_map(|a| a.as_str())
                .collect();
            if actions.is_empty() {
                problems.push(format!("{at}: no action listed"));
            }
            for a in &actions {
                if a.contains('*') || a.contains('?') {
                    problems.push(format!("{at}: wildcard action {a}"));
                }
            }
            let trust = place.contains(" trust ");
            // Whoever may assume a role is narrowed by a condition: this
            // account's clusters, or one service account of one cluster.
            if trust && st.get("Condition").is_none() {
                problems.push(format!("{at}: a trust without a condition"));
            }
            match st.get("Resource") {
                None if trust => {}
                None => problems.push(format!("{at}: no resource")),
                Some(r) => {
                    for r in list(r) {
                        if let Some(why) = unscoped(r, &actions, key_policy) {
                            problems.push(format!("{at}: {why}"));
                        }
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_refuses_what_it_should() {
    let sub = |s: &str| serde_json::json!({ "Fn::Sub": s });
    assert!(unscoped(&Value::from("*"), &["sqs:SendMessage"], false).is_some());
    assert!(
        unscoped(
            &Value::from("*"),
            &["sqs:ListQueues", "sqs:SendMessage"],
            false
        )
        .is_some()
    );
    assert!(unscoped(&Value::from("*"), &["sqs:ListQueues"], false).is_none());
    assert!(unscoped(&Value::from("arn:aws:sqs:us-east-1:1:q"), &[], false).is_some());
    assert!(
        unscoped(
            &sub("arn:${AWS::Partition}:sqs:*:${AWS::AccountId}:${Prefix}*"),
            &[],
            false
        )
        .is_some()
    );
    assert!(
        unscoped(
            &sub("arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:*"),
            &[],
            false
        )
        .is_some()
    );
    assert!(
        unscoped(
            &sub("arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${Prefix}*"),
            &[],
            false
        )
        .is_none()
    );
}

/// The IAM action for an SDK operation (`send_message_batch` is `sqs:SendMessage`).
fn action(service: &str, op: &str) -> String {
    let op = match (service, op) {
        ("sqs", "send_message_batch") => "send_message",
        ("sqs", "delete_message_batch") => "delete_message",
        ("sqs", "change_message_visibility_batch") => "change_message_visibility",
        _ => op,
    };
    let pascal: String = op
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    format!("{service}:{pascal}")
}

/// Every operation of the SDK clients the components use (from the SDKs' `client/` modules).
fn operations(service: &str) -> &'static [&'static str] {
    match service {
        "sqs" => &[
            "add_permission",
            "cancel_message_move_task",
            "change_message_visibility",
            "change_message_visibility_batch",
            "create_queue",
            "delete_message",
            "delete_message_batch",
            "delete_queue",
            "get_queue_attributes",
            "get_queue_url",
            "list_dead_letter_source_queues",
            "list_message_move_tasks",
            "list_queue_tags",
            "list_queues",
            "purge_queue",
            "receive_message",
            "remove_permission",
            "send_message",
            "send_message_batch",
            "set_queue_attributes",
            "start_message_move_task",
            "tag_queue",
            "untag_queue",
        ],
        "dynamodb" => &[
            "batch_execute_statement",
            "batch_get_item",
            "batch_write_item",
            "create_backup",
            "create_table",
            "delete_item",
            "delete_table",
            "describe_table",
            "describe_time_to_live",
            "execute_statement",
            "execute_transaction",
            "get_item",
            "list_tables",
            "put_item",
            "query",
            "scan",
            "transact_get_items",
            "transact_write_items",
            "update_item",
            "update_table",
            "update_time_to_live",
        ],
        "kms" => &[
            "create_alias",
            "create_key",
            "decrypt",
            "describe_key",
            "enable_key_rotation",
            "encrypt",
            "generate_data_key",
            "generate_data_key_without_plaintext",
            "re_encrypt",
            "schedule_key_deletion",
        ],
        _ => &[],
    }
}

/// The IAM actions the given source files' SDK calls need.
fn calls(service: &str, files: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for file in files {
        let path = root().join(file);
        let paths: Vec<PathBuf> = if path.is_dir() {
            std::fs::read_dir(&path)
                .expect("source dir")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "rs"))
                .filter(|p| p.file_name().is_some_and(|n| n != "tests.rs"))
                .collect()
        } else {
            vec![path]
        };
        for p in paths {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            for op in operations(service) {
                if text.contains(&format!(".{op}()")) {
                    out.insert(action(service, op));
                }
            }
        }
    }
    out
}

/// The actions a RolePolicy resource grants.
/// The actions a RolePolicy resource grants the component's own calls
/// (`via_service: false`) or an AWS service calling on its behalf
/// (`kms:ViaService`, `via_service: true`).
fn granted(t: &Value, policy: &str, via_service: bool) -> BTreeSet<String> {
    let doc = &t["Resources"][policy]["Properties"]["PolicyDocument"];
    list(&doc["Statement"])
        .iter()
        .filter(|st| {
            st["Condition"]["StringEquals"]
                .get("kms:ViaService")
                .is_some()
                == via_service
        })
        .flat_map(|st| list(&st["Action"]))
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

/// Whether any of the files holds `needle`.
fn mentions(files: &[&str], needle: &str) -> bool {
    files.iter().any(|f| {
        let path = root().join(f);
        let paths: Vec<PathBuf> = if path.is_dir() {
            std::fs::read_dir(&path)
                .expect("source dir")
                .map(|e| e.expect("entry").path())
                .collect()
        } else {
            vec![path]
        };
        paths
            .iter()
            .any(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains(needle)))
    })
}

#[test]
fn only_queue_svc_lets_a_service_use_the_key_for_it_and_only_sqs_for_sse() {
    let t = template();
    // queue-svc creates its queues with SSE-KMS under the key: SQS then
    // makes data keys when it sends and decrypts them when it receives.
    assert!(mentions(&["queue-svc/src/backend/sqs"], "KmsMasterKeyId"));
    let sse: BTreeSet<String> = ["kms:Decrypt", "kms:GenerateDataKey"]
        .map(String::from)
        .into();
    assert_eq!(granted(&t, "QueueSvcPolicy", true), sse);
    let doc = &t["Resources"]["QueueSvcPolicy"]["Properties"]["PolicyDocument"];
    for st in list(&doc["Statement"]) {
        if let Some(via) = st["Condition"]["StringEquals"].get("kms:ViaService") {
            assert_eq!(via["Fn::Sub"], "sqs.${AWS::Region}.amazonaws.com");
        }
    }
    for policy in ["ControlPlanePolicy", "ObjectstoreSvcPolicy"] {
        assert!(granted(&t, policy, true).is_empty(), "{policy}");
    }
}

#[test]
fn each_role_grants_exactly_the_calls_its_component_makes() {
    let t = template();
    let creation_only: BTreeSet<String> = CREATION_ONLY.iter().map(|a| a.to_string()).collect();
    let kms = calls("kms", &["common/src/kms.rs"]);
    assert!(
        kms.contains("kms:Decrypt"),
        "the master key versions are unwrapped: {kms:?}"
    );
    let components: BTreeMap<&str, BTreeSet<String>> = [
        (
            "QueueSvcPolicy",
            calls("sqs", &["queue-svc/src/backend/sqs"]),
        ),
        (
            "ObjectstoreSvcPolicy",
            calls(
                "dynamodb",
                &["objectstore-svc/src/backend/dynamodb", "common/src/aws.rs"],
            ),
        ),
        (
            "ControlPlanePolicy",
            calls(
                "dynamodb",
                &[
                    "control-plane/src/registry/dynamodb.rs",
                    "common/src/aws.rs",
                ],
            ),
        ),
    ]
    .into_iter()
    .map(|(policy, aws)| (policy, aws.into_iter().chain(kms.iter().cloned()).collect()))
    .collect();
    for (policy, used) in components {
        let used: BTreeSet<String> = used.difference(&creation_only).cloned().collect();
        let granted = granted(&t, policy, false);
        let missing: Vec<_> = used.difference(&granted).collect();
        let unused: Vec<_> = granted.difference(&used).collect();
        assert!(
            missing.is_empty() && unused.is_empty(),
            "{policy}: the code calls {missing:?} without a grant; grants {unused:?} that no call uses"
        );
    }
}

#[test]
fn with_irsa_each_role_trusts_its_components_service_account_alone() {
    let t = template();
    for (role, account) in [
        ("ControlPlaneRole", "fabric-control-plane"),
        ("QueueSvcRole", "fabric-queue-svc"),
        ("ObjectstoreSvcRole", "fabric-objectstore-svc"),
    ] {
        let trust = &t["Resources"][role]["Properties"]["AssumeRolePolicyDocument"];
        let forms = variants(trust);
        assert_eq!(forms.len(), 2, "{role}: with and without IRSA");
        let irsa = list(&forms[0]["Statement"])
            .into_iter()
            .find(|st| st["Sid"] == "Irsa")
            .unwrap_or_else(|| panic!("{role}: no IRSA statement"))
            .clone();
        let equals = &irsa["Condition"]["StringEquals"];
        assert_eq!(
            equals["${OidcProvider}:sub"],
            format!("system:serviceaccount:${{Namespace}}:{account}"),
            "{role}"
        );
        assert_eq!(equals["${OidcProvider}:aud"], "sts.amazonaws.com", "{role}");
        assert!(
            list(&forms[1]["Statement"])
                .iter()
                .all(|st| st["Principal"]["Service"] == "pods.eks.amazonaws.com"),
            "{role}: without IRSA, EKS Pod Identity alone"
        );
    }
}
