//! Every golden fixture in `events/` decodes with this binary, re-encodes to the same JSON,
//! and matches its JSON Schema; and what this binary writes matches the schemas too.

use snaptrack_auth::event::upcast::Upcasters;
use snaptrack_auth::event::{DecodeError, Envelope, Event, TYPES};
use std::path::Path;

fn events_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/events"))
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn schema_for(kind: &str, version: u64) -> jsonschema::Validator {
    let p = events_dir().join(format!("schemas/{kind}.v{version}.schema.json"));
    jsonschema::validator_for(&read_json(&p)).unwrap()
}

fn current(kind: &str) -> u32 {
    Event::current_version(kind).unwrap()
}

#[test]
fn every_version_of_every_type_has_a_schema_and_a_fixture() {
    for kind in TYPES {
        for v in 1..=current(kind) {
            assert!(
                events_dir()
                    .join(format!("schemas/{kind}.v{v}.schema.json"))
                    .exists(),
                "{kind} v{v}"
            );
            assert!(
                events_dir()
                    .join(format!("fixtures/{kind}.v{v}.json"))
                    .exists(),
                "{kind} v{v}"
            );
        }
    }
}

#[test]
fn every_fixture_decodes_round_trips_and_matches_its_schema() {
    let mut n = 0;
    for entry in std::fs::read_dir(events_dir().join("fixtures")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue; // the binary forms, tested below
        }
        let json = read_json(&path);
        let bytes = serde_json::to_vec(&json).unwrap();
        let env = Envelope::decode(&bytes, 0)
            .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()));
        let kind = json["type"].as_str().unwrap();
        let version = json["version"].as_u64().unwrap();
        assert_eq!(env.event.kind(), kind);
        let schema = schema_for(kind, version);
        assert!(
            schema.is_valid(&json),
            "{} fails its schema",
            path.display()
        );
        if version == u64::from(current(kind)) {
            let again: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
            assert_eq!(again, json, "{} does not round-trip", path.display());
        }
        n += 1;
    }
    assert!(n >= TYPES.len());
}

#[test]
fn the_schemas_reject_what_they_must() {
    let mut issued = read_json(&events_dir().join("fixtures/token_issued.v1.json"));
    issued["data"]["token"] = "snpt_plaintext".into();
    assert!(
        !schema_for("token_issued", 1).is_valid(&issued),
        "no extra fields"
    );
    let mut user = read_json(&events_dir().join("fixtures/user_registered.v1.json"));
    user["data"]["password_hash"] = "hunter2".into();
    assert!(
        !schema_for("user_registered", 1).is_valid(&user),
        "only argon2id"
    );
}

#[test]
fn an_unknown_version_or_type_is_an_error_naming_the_seq() {
    let mut json = read_json(&events_dir().join("fixtures/token_revoked.v1.json"));
    json["seq"] = 77.into();
    json["version"] = 9.into();
    let err = Envelope::decode(&serde_json::to_vec(&json).unwrap(), 77).unwrap_err();
    assert!(matches!(
        err,
        DecodeError::UnknownVersion {
            seq: 77,
            version: 9,
            ..
        }
    ));
    assert!(err.to_string().contains("seq 77"));
    json["version"] = 1.into();
    json["type"] = "token_exploded".into();
    let err = Envelope::decode(&serde_json::to_vec(&json).unwrap(), 77).unwrap_err();
    assert!(matches!(err, DecodeError::UnknownType { seq: 77, .. }));
    let err = Envelope::decode(b"{not json", 12).unwrap_err();
    assert!(err.to_string().contains("seq 12"), "{err}");
    json["type"] = "token_revoked".into();
    json["data"]["reason"] = 5.into();
    let err = Envelope::decode(&serde_json::to_vec(&json).unwrap(), 77).unwrap_err();
    assert!(matches!(err, DecodeError::Data { seq: 77, .. }), "{err}");
}

/// The upcaster of a hypothetical token_issued v1 → v2 that renamed `label` to `name`.
fn label_to_name(mut v: serde_json::Value) -> Result<serde_json::Value, String> {
    let label = v["label"].take();
    let obj = v.as_object_mut().ok_or("not an object")?;
    obj.remove("label");
    obj.insert("name".into(), label);
    Ok(v)
}

#[test]
fn upcasters_run_in_order_on_raw_json_and_a_missing_step_is_an_error() {
    // A hypothetical history: token_issued v1 had `label`, v2 renamed it to `name`, v3 added
    // `expires_at`. The chain must take v1 data to v3.
    let ups = Upcasters::default()
        .with("token_issued", 1, label_to_name)
        .with("token_issued", 2, |mut v| {
            v["expires_at"] = serde_json::Value::Null;
            Ok(v)
        });
    let v1 = serde_json::json!({"label": "ci"});
    let v3 = ups.upcast("token_issued", 1, 3, v1.clone()).unwrap();
    assert_eq!(v3, serde_json::json!({"name": "ci", "expires_at": null}));
    assert!(ups.upcast("token_revoked", 1, 2, v1).is_err());
}

#[test]
fn old_versions_in_the_binary_log_are_read_into_json_for_the_same_upcasters() {
    // A hypothetical token_issued v1 with `label`, stored in the local log's binary form:
    // its reader (the kept v1 struct) turns it into JSON, and the JSON upcaster renames.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct V1 {
        label: String,
    }
    let ups = Upcasters::default()
        .with_reader("token_issued", 1, |b| {
            let v1: V1 = postcard::from_bytes(b).map_err(|e| e.to_string())?;
            serde_json::to_value(v1).map_err(|e| e.to_string())
        })
        .with("token_issued", 1, label_to_name);
    let bytes = postcard::to_allocvec(&V1 { label: "ci".into() }).unwrap();
    let json = ups.read_binary("token_issued", 1, &bytes).unwrap();
    assert_eq!(
        ups.upcast("token_issued", 1, 2, json).unwrap(),
        serde_json::json!({"name": "ci"})
    );
    let err = ups.read_binary("token_issued", 2, &bytes).unwrap_err();
    assert!(
        err.contains("no binary reader for token_issued v2"),
        "{err}"
    );
    assert!(ups.read_binary("token_issued", 1, &[0xff]).is_err());
}

/// The local log's binary form of every fixture, pinned in `events/fixtures/<type>.v<N>.bin.hex`
/// for each type's current version N.
/// postcard stores no field names and numbers enum variants and types by position, so
/// reordering `TYPES`, an enum's variants or a payload's fields, or adding a field, would
/// change how old local logs read without any error. This test fails instead: such a change
/// needs a version bump and a binary reader for the old version. `BLESS_BINARY_FIXTURES=1`
/// writes the files (only for a new type or version).
#[test]
fn the_binary_form_of_every_fixture_is_pinned() {
    for kind in TYPES {
        let v = current(kind);
        let json = std::fs::read(events_dir().join(format!("fixtures/{kind}.v{v}.json"))).unwrap();
        let env = Envelope::decode(&json, 0).unwrap();
        let bin = env.encode_binary().unwrap();
        let path = events_dir().join(format!("fixtures/{kind}.v{v}.bin.hex"));
        if std::env::var_os("BLESS_BINARY_FIXTURES").is_some() {
            std::fs::write(&path, format!("{}\n", hex::encode(&bin))).unwrap();
        }
        let pinned = hex::decode(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(
            hex::encode(&bin),
            hex::encode(&pinned),
            "{kind}: the binary form changed; old local logs would read differently"
        );
        let back = Envelope::decode_binary(&pinned, env.seq, &Upcasters::builtin()).unwrap();
        assert_eq!(back, env, "{kind}");
        assert!(bin.len() < env.to_json().len(), "{kind}: binary is smaller");
    }
}

/// The binary forms of versions older than the current one, pinned when they were current,
/// still read: through the kept struct and the JSON upcasters, into the same event as the
/// old JSON fixture upcast.
#[test]
fn older_binary_forms_still_read_as_their_json_does() {
    let mut n = 0;
    for kind in TYPES {
        for v in 1..current(kind) {
            let json =
                std::fs::read(events_dir().join(format!("fixtures/{kind}.v{v}.json"))).unwrap();
            let from_json = Envelope::decode(&json, 0).unwrap();
            let hex =
                std::fs::read_to_string(events_dir().join(format!("fixtures/{kind}.v{v}.bin.hex")))
                    .unwrap();
            let bin = hex::decode(hex.trim()).unwrap();
            let from_bin =
                Envelope::decode_binary(&bin, from_json.seq, &Upcasters::builtin()).unwrap();
            assert_eq!(from_bin, from_json, "{kind} v{v}");
            n += 1;
        }
    }
    assert!(n >= 2, "token_issued v1 and user_registered v1 at least");
}

/// A user registered before the credential store: v2 names a credential derived from the
/// user, the hash goes to the sink (a node's credential store), and nothing else keeps it.
#[test]
fn user_registered_v1_upcasts_to_a_credential_id_and_hands_its_hash_to_the_sink() {
    let json = std::fs::read(events_dir().join("fixtures/user_registered.v1.json")).unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    let ups = Upcasters::builtin().with_credential_sink(std::sync::Arc::new(move |id, phc| {
        sink.lock().unwrap().push((id.to_owned(), phc.to_owned()))
    }));
    let env = Envelope::decode_with(&json, 0, &ups).unwrap();
    match &env.event {
        Event::UserRegistered(u) => assert_eq!(u.credential_id, "v1-user-1"),
        other => panic!("{other:?}"),
    }
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "v1-user-1");
    assert!(got[0].1.starts_with("$argon2id$"));
    // What replay prints of it: v2, no hash.
    let printed = String::from_utf8(env.to_json()).unwrap();
    assert!(!printed.contains("argon2"), "{printed}");
    assert!(printed.contains(r#""version":2"#), "{printed}");
    // Without a sink the hash goes nowhere, and the event is the same.
    assert_eq!(Envelope::decode(&json, 0).unwrap(), env);
}

/// A token issued before scopes and allowlists has every scope and works from anywhere.
#[test]
fn token_issued_v1_upcasts_to_a_token_without_restrictions() {
    let json = std::fs::read(events_dir().join("fixtures/token_issued.v1.json")).unwrap();
    let env = Envelope::decode(&json, 0).unwrap();
    match env.event {
        Event::TokenIssued(t) => {
            assert_eq!(t.scopes, None);
            assert_eq!(t.allowed_ips, None);
            assert_eq!(t.name, "ci");
        }
        other => panic!("{other:?}"),
    }
}
