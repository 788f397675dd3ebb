//! The device window's contents: one small fake device and open bus.

use std::sync::atomic::{AtomicU64, Ordering};

/// The value of the sim device's identification register (offset `0x0`,
/// 32 bits, read-only): `"1MVK"` in little-endian ASCII.
///
/// The sim device lives in the first page of
/// [`Machine::device_window`](crate::Machine::device_window). Its registers
/// are little-endian:
///
/// | offset | size | register                                         |
/// |--------|------|--------------------------------------------------|
/// | `0x0`  | 4    | id, [`SIM_DEVICE_ID`] (read-only)                |
/// | `0x4`  | 4    | version, [`SIM_DEVICE_VERSION`] (read-only)      |
/// | `0x8`  | 8    | scratch: reads back what was last written        |
///
/// Every other byte of the window reads as `0xff`; writes to it (and to the
/// read-only registers) are ignored.
pub const SIM_DEVICE_ID: u32 = 0x4B56_4D31;

/// The value of the sim device's version register (offset `0x4`, 32 bits,
/// read-only). See [`SIM_DEVICE_ID`] for the register layout.
pub const SIM_DEVICE_VERSION: u32 = 1;

/// Offset of the scratch register.
const SCRATCH: usize = 0x8;

/// Bytes of the register file.
const REGISTERS: usize = 0x10;

/// The sim device: its only state is the scratch register.
#[derive(Debug, Default)]
pub(crate) struct SimDevice {
    scratch: AtomicU64,
}

impl SimDevice {
    /// The register file as bytes, with one snapshot of the scratch register.
    fn registers(&self) -> [u8; REGISTERS] {
        let mut bytes = [0; REGISTERS];
        bytes[0x0..0x4].copy_from_slice(&SIM_DEVICE_ID.to_le_bytes());
        bytes[0x4..0x8].copy_from_slice(&SIM_DEVICE_VERSION.to_le_bytes());
        bytes[SCRATCH..].copy_from_slice(&self.scratch.load(Ordering::SeqCst).to_le_bytes());
        bytes
    }

    /// Reads `buf.len()` bytes at `offset` from the start of the window.
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) {
        let registers = self.registers();
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = usize::try_from(offset + i as u64)
                .ok()
                .and_then(|at| registers.get(at).copied())
                .unwrap_or(0xff);
        }
    }

    /// Writes `data` at `offset` from the start of the window: only the
    /// bytes that land in the scratch register have an effect, applied in
    /// one atomic update.
    pub(crate) fn write(&self, offset: u64, data: &[u8]) {
        let hits: Vec<(usize, u8)> = data
            .iter()
            .enumerate()
            .filter_map(|(i, &byte)| {
                let at = usize::try_from(offset + i as u64).ok()?;
                (SCRATCH..REGISTERS).contains(&at).then(|| (at - SCRATCH, byte))
            })
            .collect();
        if hits.is_empty() {
            return;
        }
        let merge = |old: u64| {
            let mut bytes = old.to_le_bytes();
            for &(at, byte) in &hits {
                bytes[at] = byte;
            }
            Some(u64::from_le_bytes(bytes))
        };
        // The closure always returns `Some`, so this cannot fail.
        let _ = self.scratch.fetch_update(Ordering::SeqCst, Ordering::SeqCst, merge);
    }
}
