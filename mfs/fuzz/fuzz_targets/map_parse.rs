//! Arbitrary map text: parsed or refused with a line inside the text, never
//! a panic; a parsed map prints back to the same map.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omx_mfs::cluster_map::ClusterMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ClusterMap::parse(text, "fuzz") {
        Ok(map) => {
            let again = ClusterMap::parse(&map.to_string(), "fuzz").expect("a printed map parses");
            assert_eq!(map, again);
        }
        Err(e) => assert!(e.line <= text.lines().count()),
    }
});
