//! A host's entry as read from etcd (tunnel/src/membership/entry.rs): JSON that anyone with write access to the
//! mesh's prefix chooses, so it is parsed as untrusted input.
//!
//! Input: the first byte picks the key's name among a few (matching or not), the rest is the value.
//!
//! Checks: no panic; an entry over 4096 bytes is refused; an accepted entry has the key's name, at most 64
//! subnets, none overlapping another or holding its address, and publishing it again (`of_host`) parses back to
//! the same host.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmsecd::membership::entry::{self, MAX_ENTRY_BYTES, MAX_SUBNETS};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, value)) = data.split_first() else {
        return;
    };
    let name = ["h7", "h1", "", "a.b-c_d"][usize::from(pick % 4)];
    match entry::parse(name, value) {
        Ok(m) => {
            assert!(value.len() <= MAX_ENTRY_BYTES);
            assert_eq!(m.host.name, name);
            assert!(m.host.subnets.len() <= MAX_SUBNETS);
            for (i, p) in m.host.subnets.iter().enumerate() {
                assert!(m.host.addresses().all(|a| !p.contains(a)));
                assert!(m.host.subnets[i + 1..].iter().all(|q| !q.overlaps(p)));
            }
            let again = serde_json::to_vec(&entry::of_host(&m.host, None)).expect("serializes");
            let back = entry::parse(name, &again).expect("its own entry parses back");
            assert_eq!(back.host, m.host);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
