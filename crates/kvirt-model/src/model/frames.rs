//! The frame operations of the step function: handles the model holds,
//! segments that run the allocator dry, and frames staged for a creation.

use kvirt::frame::{FrameAllocError, FrameAllocOptions};
use kvirt::kspace::KernelLayout;

use super::{Model, Outcome};

impl<L: KernelLayout> Model<'_, L> {
    pub(super) fn alloc(&mut self, frames: usize) -> Outcome {
        for _ in 0..frames {
            match self.fresh_frame()? {
                Some(f) => {
                    self.add_ref(f.paddr());
                    self.held.push(f);
                }
                None => break,
            }
        }
        Ok(())
    }

    pub(super) fn hog(&mut self, pages: usize) -> Outcome {
        let before = self.space.phys_stats();
        match FrameAllocOptions::new_in(self.space).zeroed(false).alloc_segment(pages) {
            Ok(seg) => {
                self.expect(
                    pages <= before.free_pages && seg.nr_pages() == pages,
                    "a segment as asked",
                    || {
                        format!(
                            "{} pages allocated for {pages} asked, with {} free",
                            seg.nr_pages(),
                            before.free_pages
                        )
                    },
                )?;
                self.hogs.push(seg);
                Ok(())
            }
            Err(e) => {
                let expected =
                    if pages == 0 { FrameAllocError::ZeroLength } else { FrameAllocError::OutOfMemory };
                self.expect(e == expected, "a segment is refused as the model says", || {
                    format!("allocating {pages} pages failed with {e:?}, the model expects {expected:?}")
                })?;
                let after = self.space.phys_stats();
                self.expect(after == before, "a failed allocation changes nothing", || {
                    format!("before {before:?}\nafter  {after:?}")
                })
            }
        }
    }

    pub(super) fn stage(&mut self, pages: usize) -> Outcome {
        for f in std::mem::take(&mut self.staged) {
            self.drop_ref(f.paddr());
        }
        let before = self.space.phys_stats();
        match FrameAllocOptions::new_in(self.space).alloc_segment(pages) {
            Ok(seg) => {
                self.expect(seg.nr_pages() == pages, "a segment as asked", || {
                    format!("{} pages allocated for {pages} asked", seg.nr_pages())
                })?;
                for f in seg {
                    self.bytes.remove(&f.paddr());
                    self.add_ref(f.paddr());
                    self.staged.push(f);
                }
                Ok(())
            }
            Err(e) => {
                let expected =
                    if pages == 0 { FrameAllocError::ZeroLength } else { FrameAllocError::OutOfMemory };
                self.expect(e == expected, "a segment is refused as the model says", || {
                    format!("allocating {pages} pages failed with {e:?}, the model expects {expected:?}")
                })?;
                let after = self.space.phys_stats();
                self.expect(after == before, "a failed allocation changes nothing", || {
                    format!("before {before:?}\nafter  {after:?}")
                })
            }
        }
    }
}
