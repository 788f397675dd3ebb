//! The `kvirt` command.

fn main() {
    println!("kvirt");
}
