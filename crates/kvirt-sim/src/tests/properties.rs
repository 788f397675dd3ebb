//! Property tests: random mappings translate exactly as written.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::{walk, Access, FaultKind, Translation};

/// A random 4 KiB mapping: virtual page number (48-bit space), frame number
/// and leaf flags.
#[derive(Clone, Debug)]
struct Mapping {
    vpn: usize,
    pfn: u64,
    writable: bool,
    user: bool,
    executable: bool,
    global: bool,
    /// Software bits (11:9 and 62:52) that the walker must ignore.
    ignored: u64,
}

impl Mapping {
    fn va(&self) -> usize {
        let va = self.vpn << 12;
        // Sign-extend bit 47.
        (((va as i64) << 16) >> 16) as usize
    }

    fn leaf(&self) -> u64 {
        let mut entry = self.pfn << 12 | P | self.ignored;
        entry |= if self.writable { RW } else { 0 };
        entry |= if self.user { US } else { 0 };
        entry |= if self.executable { 0 } else { XD };
        entry |= if self.global { G } else { 0 };
        entry
    }
}

/// Page numbers clustered into a few upper-level tables (so tables are
/// shared), in both halves of the address space.
fn vpn() -> impl Strategy<Value = usize> {
    (prop::sample::select(vec![0usize, 1, 255, 256, 300, 511]), 0usize..3, 0usize..3, 0usize..512)
        .prop_map(|(l4, l3, l2, l1)| l4 << 27 | l3 << 18 | l2 << 9 | l1)
}

fn mapping() -> impl Strategy<Value = Mapping> {
    (vpn(), 0u64..1 << 40, any::<[bool; 4]>(), 0u64..8, 0u64..0x800).prop_map(
        |(vpn, pfn, [writable, user, executable, global], low, high)| Mapping {
            vpn,
            pfn,
            writable,
            user,
            executable,
            global,
            ignored: low << 9 | high << 52,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_4k_mappings_translate_to_the_expected_pa(
        mappings in prop::collection::vec(mapping(), 1..40),
        offsets in prop::collection::vec(0usize..4096, 40),
        probe in vpn(),
    ) {
        let machine = small_machine();
        let mut tables = Tables::new(&machine);
        // Later mappings of one page replace earlier ones.
        let mut expected = BTreeMap::new();
        for mapping in &mappings {
            tables.map_4k(mapping.va(), 0, mapping.leaf());
            expected.insert(mapping.vpn, mapping.clone());
        }
        let cpu = machine.cpu(0);
        cpu.set_root(tables.root);
        for (mapping, &offset) in expected.values().zip(&offsets) {
            let va = mapping.va() + offset;
            let want = Translation {
                pa: mapping.pfn << 12 | offset as u64,
                page_size: KIB4,
                readable: true,
                writable: mapping.writable,
                user: mapping.user,
                supervisor: true,
                executable: mapping.executable,
                user_executable: mapping.executable,
                global: mapping.global,
            };
            prop_assert_eq!(walk(&machine, tables.root, va, Access::READ), Ok(want));
            prop_assert_eq!(cpu.translate(va, Access::READ), Ok(want));
            prop_assert_eq!(cpu.translate(va, Access::WRITE).is_ok(), mapping.writable);
        }
        if !expected.contains_key(&probe) {
            let va = Mapping { vpn: probe, ..mappings[0].clone() }.va();
            let fault = walk(&machine, tables.root, va, Access::READ).unwrap_err();
            prop_assert!(matches!(fault.kind, FaultKind::NotPresent { .. }), "{:?}", fault);
        }
    }
}
