//! `kvirt demo`: a narrated scenario on an isolated hosted kernel space.
//!
//! It creates tracked and untracked areas, queries them, reads and writes
//! through them with the simulated CPUs' MMUs, shows a stale TLB entry on
//! a raw page table and the flush that cures it, splits an area, prints the
//! area registry, drops everything and checks that the physical and VMALLOC
//! counters are back where they started.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};

use kvirt::frame::{FrameAllocOptions, PhysStats};
use kvirt::kspace::{paddr_to_vaddr, KernelSpace, MappedItemRef, VmallocStats};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};
use kvirt::page_table::{KernelPtConfig, MappedItem, PageTable, PageTableFrag};
use kvirt::platform::{TlbFlushOp, TlbScope};
use kvirt::sim::{Access, MachineConfig, RegionKind, SIM_DEVICE_ID};
use kvirt::spec::Inv;
use kvirt::PAGE_SIZE;

use crate::{ensure, human_bytes, Error};

/// The simulated machine of the demo: 256 MiB of RAM and two CPUs (the
/// second one plays the CPU with the stale TLB entry).
#[must_use]
pub fn machine_config() -> MachineConfig {
    MachineConfig::new(256 << 20).cpus(2)
}

/// A short form of a property: `RW- WB global`.
#[must_use]
pub fn fmt_prop(p: &PageProperty) -> String {
    let bit = |f: PageFlags, c: char| if p.flags.contains(f) { c } else { '-' };
    let cache = match p.cache {
        CachePolicy::Writeback => "WB",
        CachePolicy::Writethrough => "WT",
        CachePolicy::Uncacheable => "UC",
        CachePolicy::WriteCombining => "WC",
        CachePolicy::WriteProtected => "WP",
    };
    let mut s =
        format!("{}{}{} {cache}", bit(PageFlags::R, 'R'), bit(PageFlags::W, 'W'), bit(PageFlags::X, 'X'));
    if p.priv_flags.contains(PrivilegedPageFlags::GLOBAL) {
        s.push_str(" global");
    }
    if p.priv_flags.contains(PrivilegedPageFlags::USER) {
        s.push_str(" user");
    }
    s
}

fn fmt_item(item: Option<&MappedItemRef<'_>>) -> String {
    match item {
        None => "nothing mapped".to_string(),
        Some(MappedItemRef::Tracked(f, p)) => {
            format!(
                "tracked frame pa {:#x} (4 KiB, refcount {}), {}",
                f.paddr(),
                f.reference_count(),
                fmt_prop(p)
            )
        }
        Some(MappedItemRef::Untracked(pa, level, p)) => {
            let size = PAGE_SIZE << (9 * (*level as usize - 1));
            format!("untracked pa {pa:#x}, level {level} page ({}), {}", human_bytes(size), fmt_prop(p))
        }
    }
}

fn fmt_phys(s: &PhysStats) -> String {
    format!(
        "{} pages managed, {} used ({} of them page-table nodes), {} free",
        s.total_pages, s.used_pages, s.page_table_pages, s.free_pages
    )
}

fn fmt_vmalloc(s: &VmallocStats) -> String {
    format!(
        "{} free of {} in {} fragment(s), largest free {}",
        human_bytes(s.free_bytes),
        human_bytes(s.total_bytes),
        s.fragments,
        human_bytes(s.largest_free)
    )
}

/// Shows `bytes` as text if printable, else as hex.
fn show_bytes(bytes: &[u8]) -> String {
    if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(bytes))
    } else {
        bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
    }
}

/// Runs `f`, turning a panic into its message (the default hook's report
/// is silenced meanwhile).
fn panic_message<R>(f: impl FnOnce() -> R) -> Option<String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    match result {
        Ok(_) => None,
        Err(payload) => Some(
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "(non-string panic)".to_string()),
        ),
    }
}

struct Narrator<'a> {
    out: &'a mut dyn Write,
    section: usize,
}

impl Narrator<'_> {
    fn section(&mut self, title: &str) -> Result<(), Error> {
        self.section += 1;
        let heading = format!("{}. {title}", self.section);
        writeln!(self.out, "\n{heading}\n{}", "-".repeat(heading.len()))?;
        Ok(())
    }

    fn say(&mut self, text: impl AsRef<str>) -> Result<(), Error> {
        writeln!(self.out, "{}", text.as_ref())?;
        Ok(())
    }
}

/// Runs the demo, writing the narration to `out`.
///
/// # Errors
///
/// If an expectation fails (a leak, a wrong translation, a TLB that is
/// not stale when it should be) or `out` cannot be written.
pub fn run(out: &mut dyn Write) -> Result<(), Error> {
    let mut n = Narrator { out, section: 0 };
    n.say("kvirt demo: kernel virtual areas on a simulated x86-64 machine")?;
    n.say("==============================================================")?;

    // 1. The machine.
    n.section("A hosted machine and its kernel space")?;
    let space = KernelSpace::new_hosted(machine_config());
    // SAFETY: only the machine's configuration is read.
    let machine = unsafe { space.machine() }.expect("a hosted space has a machine").clone();
    n.say(format!(
        "machine: {} of RAM, {} CPUs, device window {:#x?}",
        human_bytes(machine.ram_size()),
        machine.nr_cpus(),
        machine.device_window()
    ))?;
    n.say("firmware memory map:")?;
    for r in machine.memory_map() {
        let kind = match r.kind {
            RegionKind::Usable => "usable RAM",
            RegionKind::Reserved => "reserved RAM",
            RegionKind::Device => "device window",
        };
        let len = usize::try_from(r.range.end - r.range.start).unwrap_or(usize::MAX);
        n.say(format!("  {:#012x}..{:#012x}  {kind} ({})", r.range.start, r.range.end, human_bytes(len)))?;
    }
    n.say(format!("kernel page table root (what CR3 gets): {:#x}", space.kernel_root_paddr()))?;
    space.synchronize();
    let (phys_before, vmalloc_before) = (space.phys_stats(), space.vmalloc_stats());
    n.say(format!("physical memory at start: {}", fmt_phys(&phys_before)))?;
    n.say(format!("VMALLOC at start:         {}", fmt_vmalloc(&vmalloc_before)))?;

    let rw_wb = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
    let rw_uc = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Uncacheable);
    let dev = machine.device_window();
    let dev_start = usize::try_from(dev.start)?;

    // 2. Areas.
    n.section("Creating kernel virtual areas")?;
    let frames = FrameAllocOptions::new_in(&space).alloc_segment(4)?;
    let first_pa = frames.paddr();
    let tracked = space.try_map_frames(6 * PAGE_SIZE, PAGE_SIZE, frames, rw_wb)?;
    tracked.set_label("demo: tracked buffer");
    n.say(format!(
        "tracked:   4 fresh frames (pa {first_pa:#x}..) mapped from offset 4 KiB of a 24 KiB area\n           area {:#x}..{:#x}, mapped part {:#x?}",
        tracked.start(),
        tracked.end(),
        tracked.mapped_range()
    ))?;
    // SAFETY: the first page of the simulated device window holds the sim
    // device's registers; nothing else owns them.
    let mmio =
        unsafe { space.try_map_untracked_frames(PAGE_SIZE, 0, dev_start..dev_start + PAGE_SIZE, rw_uc) }?;
    mmio.set_label("demo: sim device registers");
    n.say(format!(
        "untracked: the sim device's register page (pa {dev_start:#x}), uncached, at {:#x}",
        mmio.start()
    ))?;
    // SAFETY: the whole simulated device window: device memory no Rust
    // object owns; the demo only reads it.
    let window =
        unsafe { space.try_map_untracked_frames(1 << 30, 0, dev_start..dev_start + (1 << 30), rw_uc) }?;
    window.set_label("demo: whole device window");
    n.say(format!(
        "untracked: the whole 1 GiB device window at {:#x} (1 GiB aligned, so one huge page)",
        window.start()
    ))?;
    // SAFETY: an empty physical range maps nothing.
    let reserved = unsafe { space.try_map_untracked_frames(4 * PAGE_SIZE, 0, 0..0, rw_wb) }?;
    reserved.set_label("demo: reserved, nothing mapped");
    n.say(format!(
        "untracked: 16 KiB reserved with nothing mapped (pa range 0..0) at {:#x}",
        reserved.start()
    ))?;
    let guard_gap = mmio.start().wrapping_sub(tracked.end());
    n.say(format!("neighbouring areas are separated by an unmapped guard: {guard_gap:#x} bytes here"))?;
    ensure(space.inv() && tracked.inv() && mmio.inv() && window.inv() && reserved.inv(), || {
        "an invariant broke after creating the areas".into()
    })?;
    n.say("invariants (kvirt::spec::Inv) of the space and every area: hold")?;

    n.say("\nrejected requests change nothing:")?;
    let spare = FrameAllocOptions::new_in(&space).alloc_frame()?;
    let spare_pa = spare.paddr();
    let rejections = [
        ("map_frames(area_size 0)", space.try_map_frames(0, 0, [spare.clone()], rw_wb).map(drop)),
        (
            "map_frames(user-accessible property)",
            space
                .try_map_frames(
                    PAGE_SIZE,
                    0,
                    [spare.clone()],
                    PageProperty::new_user(PageFlags::RW, CachePolicy::Writeback),
                )
                .map(drop),
        ),
        (
            "map_untracked_frames(a tracked frame's pa)",
            // SAFETY: rejected before anything is mapped.
            unsafe { space.try_map_untracked_frames(PAGE_SIZE, 0, spare_pa..spare_pa + PAGE_SIZE, rw_wb) }
                .map(drop),
        ),
    ];
    drop(spare);
    for (what, result) in rejections {
        let e = result.err().ok_or_else(|| format!("{what} was accepted"))?;
        n.say(format!("  {what:<44} -> {e}"))?;
    }

    // 3. Queries.
    n.section("Querying the areas")?;
    for page in 0..6 {
        let va = tracked.start() + page * PAGE_SIZE;
        n.say(format!("  tracked  +{:#07x} -> {}", page * PAGE_SIZE, fmt_item(tracked.query(va).as_ref())))?;
    }
    n.say(format!("  mmio     +0x00000 -> {}", fmt_item(mmio.query(mmio.start()).as_ref())))?;
    let deep = 0x1234_5678;
    let item = window.query(window.start() + deep);
    n.say(format!("  window   +{deep:#x} -> {}", fmt_item(item.as_ref())))?;
    ensure(item.as_ref().is_some_and(|i| i.level() == 3), || {
        "the device window is not one 1 GiB page".into()
    })?;
    n.say(format!("  reserved +0x00000 -> {}", fmt_item(reserved.query(reserved.start()).as_ref())))?;
    let end = tracked.end();
    let msg = panic_message(|| tracked.query(end)).ok_or("query(end()) did not panic")?;
    n.say(format!("  tracked.query(end()) panics (start <= addr < end is required):\n    {msg}"))?;

    // 4. The software MMU.
    n.section("Reading and writing through the software MMU")?;
    let cpu0 = machine.cpu(0);
    cpu0.set_root(u64::try_from(space.kernel_root_paddr())?);
    n.say(format!("CPU 0: CR3 <- {:#x} (the kernel page table)", space.kernel_root_paddr()))?;
    let hello = b"hello from CPU 0";
    let va = tracked.start() + PAGE_SIZE;
    cpu0.write(va, hello)?;
    n.say(format!("CPU 0 writes {} at {va:#x}", show_bytes(hello)))?;
    let mut back = vec![0; hello.len()];
    tracked.read_bytes(PAGE_SIZE, &mut back)?;
    n.say(format!("tracked.read_bytes(offset 0x1000)      -> {}", show_bytes(&back)))?;
    ensure(back == hello, || "the area does not see what the CPU wrote".into())?;
    let across = b"kvirt writes across a page boundary";
    let offset = 3 * PAGE_SIZE - 10;
    tracked.write_bytes(offset, across)?;
    let mut back = vec![0; across.len()];
    cpu0.read(tracked.start() + offset, &mut back)?;
    n.say(format!(
        "tracked.write_bytes(offset {offset:#x}, ..); CPU 0 reads it back -> {}",
        show_bytes(&back)
    ))?;
    ensure(back == across, || "the CPU does not see what the area wrote".into())?;
    let mut id = [0; 4];
    cpu0.read(mmio.start(), &mut id)?;
    let id_value = u32::from_le_bytes(id);
    n.say(format!(
        "CPU 0 reads the device id register at {:#x} -> {id_value:#010x} ({})",
        mmio.start(),
        show_bytes(&id)
    ))?;
    ensure(id_value == SIM_DEVICE_ID, || "the device id register reads wrong".into())?;
    let e = tracked.write_bytes(0, b"x").err().ok_or("writing an unmapped page succeeded")?;
    n.say(format!("tracked.write_bytes(offset 0, ..) -> error: {e}"))?;
    let fault = cpu0.read(tracked.end(), &mut [0; 1]).err().ok_or("the guard page is readable")?;
    n.say(format!("CPU 0 reads the guard page after the area -> {fault}"))?;
    let lin = paddr_to_vaddr(first_pa);
    let t = cpu0.translate(lin, Access::READ)?;
    n.say(format!("CPU 0 translates the linear-mapping address {lin:#x} -> pa {:#x}", t.pa))?;

    // 5. The stale TLB entry.
    n.section("A stale TLB entry, caught and cured by a flush")?;
    stale_tlb(&mut n, &space)?;

    // 6. Split.
    n.section("Splitting an area")?;
    let (left, right) = tracked.split(3 * PAGE_SIZE);
    n.say(format!(
        "split the tracked area at 12 KiB: left {:#x}..{:#x}, right {:#x}..{:#x}",
        left.start(),
        left.end(),
        right.start(),
        right.end()
    ))?;
    ensure(left.inv() && right.inv(), || "a split half breaks its invariant".into())?;

    // 7. The registry.
    n.section("The area registry (like /proc/vmallocinfo)")?;
    for info in space.areas() {
        n.say(format!("  {info}"))?;
    }

    // 8. Drop everything.
    n.section("Dropping every area")?;
    for (name, area) in [
        ("left half", left),
        ("right half", right),
        ("mmio", mmio),
        ("window", window),
        ("reserved", reserved),
    ] {
        let range = area.range();
        drop(area);
        n.say(format!("  dropped {name:<10} {:#x}..{:#x}", range.start, range.end))?;
    }
    space.synchronize();
    n.say(format!("registry now holds {} area(s)", space.areas().len()))?;
    ensure(space.areas().is_empty(), || "areas are left in the registry".into())?;
    ensure(space.inv(), || "the space's invariant broke".into())?;

    n.section("Leak counters")?;
    let (phys_after, vmalloc_after) = (space.phys_stats(), space.vmalloc_stats());
    n.say(format!("physical memory before: {}", fmt_phys(&phys_before)))?;
    n.say(format!("physical memory after:  {}", fmt_phys(&phys_after)))?;
    n.say(format!("VMALLOC before: {}", fmt_vmalloc(&vmalloc_before)))?;
    n.say(format!("VMALLOC after:  {}", fmt_vmalloc(&vmalloc_after)))?;
    let verdict = |same: bool| if same { "equal" } else { "DIFFERENT" };
    n.say(format!("phys counters: {}", verdict(phys_before == phys_after)))?;
    n.say(format!("vmalloc counters: {}", verdict(vmalloc_before == vmalloc_after)))?;
    ensure(phys_before == phys_after && vmalloc_before == vmalloc_after, || {
        "memory leaked: the counters differ".into()
    })?;
    n.say("\nnothing leaked: every frame, page-table node and virtual range is back.")?;
    Ok(())
}

/// Section 5: a raw page table, CPU 1 caching a translation, a remap without
/// flush (stale), then the flush.
fn stale_tlb(n: &mut Narrator<'_>, space: &KernelSpace) -> Result<(), Error> {
    // SAFETY: CPU 1 walks a table of this space that maps only frames this
    // section holds while the CPU may use them, and reads only those.
    let machine = unsafe { space.machine() }.expect("hosted").clone();
    let cpu1 = machine.cpu(1);
    let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
    let pt = PageTable::<KernelPtConfig>::empty_in(space)?;
    let va: usize = 0xffff_d000_0000_0000;
    let a = FrameAllocOptions::new_in(space).alloc_frame()?;
    let b = FrameAllocOptions::new_in(space).alloc_frame()?;
    a.fill(b'A');
    b.fill(b'B');
    n.say(format!(
        "a raw page table (PageTable::empty_in), root {:#x}; frame A at pa {:#x} holds 'A's, frame B at pa {:#x} 'B's",
        pt.root_paddr(),
        a.paddr(),
        b.paddr()
    ))?;
    {
        let mut c = pt.cursor_mut(&(va..va + 4 * PAGE_SIZE))?;
        c.map(MappedItem::Tracked(a.clone().into_dyn(), prop));
    }
    cpu1.set_root(u64::try_from(pt.root_paddr())?);
    let read = || -> Result<[u8; 8], Error> {
        let mut buf = [0; 8];
        cpu1.read(va, &mut buf)?;
        Ok(buf)
    };
    let first = read()?;
    n.say(format!(
        "map A at {va:#x}; CPU 1 (CR3 <- that root) reads it -> {}; its TLB now caches {} translation(s)",
        show_bytes(&first),
        cpu1.tlb_entries()
    ))?;
    ensure(first == [b'A'; 8], || "CPU 1 does not see frame A".into())?;

    // Remap without flushing: take A out, put B in, in one cursor that holds
    // the leaf node (so nothing is detached and nothing is flushed).
    let frag_a = {
        let mut c = pt.cursor_mut(&(va..va + PAGE_SIZE))?;
        let frag = c.take_next(PAGE_SIZE).ok_or("A is not mapped")?;
        c.jump(va)?;
        c.map(MappedItem::Tracked(b.clone().into_dyn(), prop));
        frag
    };
    let (now, _) = pt.translate(va).ok_or("B is not mapped")?;
    n.say(format!(
        "remap without a flush: take A out, map B; the page table now says {va:#x} -> pa {now:#x} (B)"
    ))?;
    let stale = read()?;
    n.say(format!("CPU 1 reads {va:#x} -> {}   <- STALE: its TLB still maps frame A", show_bytes(&stale)))?;
    ensure(stale == [b'A'; 8], || "expected CPU 1 to use its stale TLB entry".into())?;
    n.say(format!(
        "frame A is still owned by the unmapped fragment (refcount {}): it cannot be reused while a TLB may cache it",
        a.reference_count()
    ))?;

    space.platform().flush_tlb(TlbFlushOp::Page(va), TlbScope::AllCpus);
    let fresh = read()?;
    n.say(format!(
        "flush_tlb(Page({va:#x}), AllCpus); CPU 1 reads {va:#x} -> {}   <- correct",
        show_bytes(&fresh)
    ))?;
    ensure(fresh == [b'B'; 8], || "the flush did not cure the stale entry".into())?;
    let PageTableFrag::Mapped { item: MappedItem::Tracked(old, _), .. } = frag_a else {
        return Err(Error("the fragment is not frame A".into()));
    };
    ensure(old.paddr() == a.paddr(), || "the fragment is not frame A".into())?;
    drop(old);
    n.say(format!(
        "after the flush the fragment is dropped: frame A's refcount is back to {}",
        a.reference_count()
    ))?;

    // Clean up: unmap B (flush first), free the table.
    {
        let mut c = pt.cursor_mut(&(va..va + PAGE_SIZE))?;
        let frag = c.take_next(PAGE_SIZE);
        drop(c);
        space.platform().flush_tlb(TlbFlushOp::Page(va), TlbScope::AllCpus);
        drop(frag);
    }
    drop(pt);
    cpu1.set_root(u64::try_from(space.kernel_root_paddr())?);
    Ok(())
}
