//! `UserDb::parse` on arbitrary text (bytes that are not UTF-8 go through a lossy conversion,
//! as a file read with replacement characters would).
//!
//! Checked: no panic; an accepted file holds only users whose name passes `validate_name`,
//! whose hash is an argon2id PHC string with a salt, a hash and costs within the limits, and
//! whose home is non-empty without NUL; lookups by name agree with the iteration.
//!
//! `UserDb::parse` runs no argon2: the dummy hash is made lazily by `UserDb::dummy_hash` (or
//! eagerly by `UserDb::load`), and this target calls neither, nor `verify_password`. An accepted
//! hash may ask for 1 GiB and 100 passes, so hashing here would make the fuzzer crawl.
#![no_main]

use argon2::{ARGON2ID_IDENT, Params, PasswordHash};
use ferry::users::{MAX_M_KIB, MAX_P_COST, MAX_T_COST, UserDb, validate_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(db) = UserDb::parse(&text) else {
        return;
    };
    let mut count = 0;
    let mut last: Option<&str> = None;
    for user in db.users() {
        count += 1;
        assert!(
            validate_name(&user.name).is_ok(),
            "accepted name {:?}",
            user.name
        );
        assert!(
            last.is_none_or(|l| l < user.name.as_str()),
            "users not sorted or duplicated"
        );
        last = Some(&user.name);
        assert!(std::ptr::eq(
            db.get(&user.name).expect("listed user found"),
            user
        ));

        let phc = PasswordHash::new(&user.password_hash).expect("accepted hash is a PHC string");
        assert_eq!(
            phc.algorithm, ARGON2ID_IDENT,
            "accepted hash is not argon2id"
        );
        assert!(phc.salt.is_some() && phc.hash.is_some());
        let params = Params::try_from(&phc).expect("accepted hash has valid argon2 params");
        assert!(params.m_cost() <= MAX_M_KIB);
        assert!(params.t_cost() <= MAX_T_COST);
        assert!(params.p_cost() <= MAX_P_COST);

        if let Some(home) = &user.home {
            let home = home.as_os_str().as_encoded_bytes();
            assert!(!home.is_empty() && !home.contains(&0));
        }
    }
    assert_eq!(count, db.len());
    assert_eq!(db.is_empty(), count == 0);
});
