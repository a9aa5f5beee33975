//! `cargo xtask bench`: filled in below.
pub fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("bench: not yet implemented")
}
