//! (to be written)

use vstd::prelude::*;

verus! {

} // verus!
