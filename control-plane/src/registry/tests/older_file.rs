//! A registry file an earlier version wrote in plaintext is sealed when opened.

use super::*;

#[tokio::test]
async fn an_older_plaintext_file_is_sealed_when_opened() {
    const OLD_APPS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("apps");
    const OLD_PLACEMENTS: redb::TableDefinition<&str, &[u8]> =
        redb::TableDefinition::new("placements");
    const OLD_TENANTS: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("tenants");
    let b = Backing::embedded();
    let Backing::Embedded(dir) = &b else {
        unreachable!()
    };
    let path = Backing::file(dir);
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let app = serde_json::to_vec(&record("orders")).unwrap();
        let p = serde_json::to_vec(&placement("orders")).unwrap();
        txn.open_table(OLD_APPS)
            .unwrap()
            .insert("orders", app.as_slice())
            .unwrap();
        txn.open_table(OLD_PLACEMENTS)
            .unwrap()
            .insert(placement("orders").key().as_str(), p.as_slice())
            .unwrap();
        txn.open_table(OLD_TENANTS)
            .unwrap()
            .insert(key_hash("secret-key").as_str(), "t1")
            .unwrap();
        txn.commit().unwrap();
    }
    assert!(contains(&std::fs::read(&path).unwrap(), SECRET.as_bytes()));

    let ring = keyring();
    let r = b.open(&ring).await.unwrap();
    assert_eq!(r.app("orders"), Some(record("orders")));
    assert_eq!(r.placements(), [placement("orders")]);
    assert_eq!(r.tenant_of("secret-key").as_deref(), Some("t1"));
    assert_eq!(r.close(WAIT).await, 0);
    assert!(
        !contains(&b.raw().await, SECRET.as_bytes()),
        "the plaintext is gone from the file"
    );
    let r = b.open(&ring).await.unwrap();
    assert_eq!(names(&r), ["orders"]);
    assert_eq!(r.close(WAIT).await, 0);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["registry.redb"]);
}
