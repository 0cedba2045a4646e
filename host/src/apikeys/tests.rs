//! Unit tests of the key store: verification, MACs, bootstrap files, managed keys.

use super::*;

#[test]
fn verify_and_rights() {
    let s = ApiKeyStore::default();
    s.add("k", "secret", vec![Right::ConnectionsRead], "t1");
    let k = s.verify("k", "secret").unwrap();
    assert_eq!(k.tenant, "t1");
    assert!(k.has(Right::ConnectionsRead));
    assert!(!k.has(Right::Publish));
    assert!(s.verify("k", "wrong").is_none());
    assert!(s.verify("nokey", "secret").is_none());
    s.add("k2", "other", vec![Right::Publish], "t2");
    assert_eq!(s.verify_secret("other").unwrap().key, "k2");
    assert_eq!(s.verify_secret("secret").unwrap().key, "k");
    assert!(s.verify_secret("nothing").is_none());
    assert!(
        !format!("{k:?}").contains("secret\""),
        "Debug hides the secret"
    );
}

#[test]
fn macs_match_the_rfc_vectors_and_verify_in_the_store() {
    // RFC 2202 / RFC 4231 test case 2: key "Jefe".
    let s = ApiKeyStore::default();
    s.add("k", "Jefe", vec![Right::Admin], "*");
    let msg = b"what do ya want for nothing?";
    let k = s.lookup("k").unwrap();
    let hex = |v: Vec<u8>| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(k.mac(MacAlgorithm::HmacSha1, msg).unwrap()),
        "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
    );
    assert_eq!(
        hex(k.mac(MacAlgorithm::HmacSha256, msg).unwrap()),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    let sig = k.mac(MacAlgorithm::HmacSha1, msg).unwrap();
    assert!(s
        .verify_mac("k", MacAlgorithm::HmacSha1, msg, &sig)
        .is_some());
    assert!(s
        .verify_mac("k", MacAlgorithm::HmacSha256, msg, &sig)
        .is_none());
    assert!(s
        .verify_mac("k", MacAlgorithm::HmacSha1, b"other", &sig)
        .is_none());
    assert!(k.may_touch("anything"));
}

#[test]
fn bootstrap_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("keys");
    std::fs::write(
        &p,
        "# comment\nadmin:s3cret:admin\nro:x:connections:read,publish:tenant=acme\n",
    )
    .unwrap();
    let s = ApiKeyStore::default();
    assert_eq!(s.load_file(&p).unwrap(), 2);
    assert!(s.verify("admin", "s3cret").unwrap().has(Right::Publish));
    let ro = s.verify("ro", "x").unwrap();
    assert_eq!(ro.tenant, "acme");
    assert!(ro.has(Right::ConnectionsRead) && ro.has(Right::Publish));
    assert!(!ro.has(Right::ConnectionsWrite));
    std::fs::write(&p, "a:b:fly\n").unwrap();
    let e = s.load_file(&p).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("fly"), "{e}");
}

fn new_key(name: &str, signing: bool) -> NewKey {
    NewKey {
        name: name.into(),
        desc: "d".into(),
        tenant: "*".into(),
        rights: vec![Right::ConnectionsRead],
        expires_at: None,
        enabled: true,
        signing,
    }
}

#[test]
fn managed_keys_persist_hashed_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = ApiKeyStore::default();
    assert!(matches!(
        s.create(new_key("x", false)),
        Err(ManagedError::NoBacking)
    ));
    assert_eq!(s.open_managed(dir.path()).unwrap(), 0);
    let (plain, plain_secret) = s.create(new_key("plain", false)).unwrap();
    let (signer, signer_secret) = s.create(new_key("signer", true)).unwrap();
    assert!(s.verify(&plain.key, &plain_secret).is_some());
    assert!(plain.mac(MacAlgorithm::HmacSha256, b"m").is_none());
    let sig = signer.mac(MacAlgorithm::HmacSha256, b"m").unwrap();
    assert!(matches!(
        s.create(new_key("plain", false)),
        Err(ManagedError::Exists(_))
    ));
    // Neither secret is on disk in the clear.
    let text = std::fs::read_to_string(dir.path().join("api-keys.json")).unwrap();
    assert!(!text.contains(&plain_secret) && !text.contains(&signer_secret));
    s.save_last_used().unwrap();

    let again = ApiKeyStore::default();
    assert_eq!(again.open_managed(dir.path()).unwrap(), 2);
    let k = again.verify(&plain.key, &plain_secret).unwrap();
    assert_eq!((k.name.as_str(), k.desc.as_str()), ("plain", "d"));
    assert!(k.last_used().is_some(), "last use saved");
    assert!(again
        .verify_mac(&signer.key, MacAlgorithm::HmacSha256, b"m", &sig)
        .is_some());
    assert!(again
        .verify_mac(&plain.key, MacAlgorithm::HmacSha256, b"m", &sig)
        .is_none());
}

#[test]
fn disable_expire_rotate_and_delete_take_effect_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = ApiKeyStore::default();
    s.add("boot", "b", vec![Right::Admin], "*");
    s.open_managed(dir.path()).unwrap();
    let (k, secret) = s.create(new_key("k", true)).unwrap();
    let off = KeyChange {
        enabled: Some(false),
        ..Default::default()
    };
    s.update("k", off).unwrap();
    assert!(s.verify(&k.key, &secret).is_none() && s.lookup(&k.key).is_none());
    let on = KeyChange {
        enabled: Some(true),
        expires_at: Some(Some(unix_now() - 1)),
        ..Default::default()
    };
    s.update("k", on).unwrap();
    assert!(s.verify(&k.key, &secret).is_none(), "expired");
    let never = KeyChange {
        expires_at: Some(None),
        ..Default::default()
    };
    s.update("k", never).unwrap();
    assert!(s.verify(&k.key, &secret).is_some());
    let (_, fresh) = s.rotate("k").unwrap();
    assert!(s.verify(&k.key, &secret).is_none());
    assert!(s.verify(&k.key, &fresh).is_some());
    assert!(s.verify_secret(&fresh).is_some());
    let sig = s.lookup(&k.key).unwrap().mac(MacAlgorithm::HmacSha1, b"x");
    assert!(sig.is_some(), "a rotated signing key still signs");
    assert!(matches!(
        s.update("boot", KeyChange::default()),
        Err(ManagedError::FromFile { .. })
    ));
    assert!(matches!(s.delete("nope"), Err(ManagedError::NotFound(_))));
    s.delete("k").unwrap();
    assert!(s.verify(&k.key, &fresh).is_none());
    let again = ApiKeyStore::default();
    assert_eq!(again.open_managed(dir.path()).unwrap(), 0);
}

#[test]
fn bad_fields_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = ApiKeyStore::default();
    s.open_managed(dir.path()).unwrap();
    for (name, rights, expires) in [
        ("bad name", vec![Right::Admin], None),
        ("", vec![Right::Admin], None),
        ("ok", vec![], None),
        ("ok", vec![Right::Admin], Some(1)),
    ] {
        let mut n = new_key(name, false);
        n.rights = rights;
        n.expires_at = expires;
        assert!(matches!(s.create(n), Err(ManagedError::Invalid(_))));
    }
    assert!(!dir.path().join("api-keys.json").exists());
}

#[test]
fn a_damaged_file_or_replaced_sealing_key_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = ApiKeyStore::default();
    s.open_managed(dir.path()).unwrap();
    s.create(new_key("signer", true)).unwrap();
    let file = dir.path().join("api-keys.json");
    let good = std::fs::read(&file).unwrap();
    // Another sealing key: the signing secret no longer opens.
    std::fs::remove_file(dir.path().join("api-keys.key")).unwrap();
    let e = ApiKeyStore::default()
        .open_managed(dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("signer") && e.contains("api-keys.key"), "{e}");
    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    let e = ApiKeyStore::default()
        .open_managed(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("api-keys.json") && e.contains("not valid"),
        "{e}"
    );
}
