//! Distribution flags (reference §4).

/// A set of DFLAG bits as carried in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DFlags(pub u64);

#[allow(missing_docs)]
impl DFlags {
    pub const PUBLISHED: u64 = 0x1;
    pub const ATOM_CACHE: u64 = 0x2;
    pub const EXTENDED_REFERENCES: u64 = 0x4;
    pub const DIST_MONITOR: u64 = 0x8;
    pub const FUN_TAGS: u64 = 0x10;
    pub const DIST_MONITOR_NAME: u64 = 0x20;
    pub const HIDDEN_ATOM_CACHE: u64 = 0x40;
    pub const NEW_FUN_TAGS: u64 = 0x80;
    pub const EXTENDED_PIDS_PORTS: u64 = 0x100;
    pub const EXPORT_PTR_TAG: u64 = 0x200;
    pub const BIT_BINARIES: u64 = 0x400;
    pub const NEW_FLOATS: u64 = 0x800;
    pub const UNICODE_IO: u64 = 0x1000;
    pub const DIST_HDR_ATOM_CACHE: u64 = 0x2000;
    pub const SMALL_ATOM_TAGS: u64 = 0x4000;
    pub const UTF8_ATOMS: u64 = 0x10000;
    pub const MAP_TAG: u64 = 0x20000;
    pub const BIG_CREATION: u64 = 0x40000;
    pub const SEND_SENDER: u64 = 0x80000;
    pub const BIG_SEQTRACE_LABELS: u64 = 0x100000;
    pub const EXIT_PAYLOAD: u64 = 0x400000;
    pub const FRAGMENTS: u64 = 0x800000;
    pub const HANDSHAKE_23: u64 = 0x1000000;
    pub const UNLINK_ID: u64 = 0x2000000;
    pub const MANDATORY_25_DIGEST: u64 = 0x4000000;
    pub const SPAWN: u64 = 1 << 32;
    pub const NAME_ME: u64 = 1 << 33;
    pub const V4_NC: u64 = 1 << 34;
    pub const ALIAS: u64 = 1 << 35;

    /// OTP 25's mandatory set (`DFLAG_DIST_MANDATORY_25`).
    pub const MANDATORY_25: u64 = 0x0107_0F94;
    /// What OTP 26 adds to the mandatory set.
    pub const MANDATORY_26: u64 = Self::V4_NC | Self::UNLINK_ID;
    /// Everything an OTP 25–27 peer may insist on.
    pub const MANDATORY: u64 = Self::MANDATORY_25 | Self::MANDATORY_26;

    /// What edist offers: OTP 25's defaults without the atom cache (reference §4.1,
    /// `0xD07DF5FBC`), published or not.
    pub fn edist_default(published: bool) -> DFlags {
        DFlags(0xD_07DF_5FBC | if published { Self::PUBLISHED } else { 0 })
    }

    /// Whether every bit of `bits` is set.
    pub fn has(self, bits: u64) -> bool {
        self.0 & bits == bits
    }

    /// Expands `MANDATORY_25_DIGEST` into the eleven flags it stands for.
    pub fn expand(self) -> DFlags {
        if self.has(Self::MANDATORY_25_DIGEST) {
            DFlags(self.0 | Self::MANDATORY_25)
        } else {
            self
        }
    }

    /// The flags both sides use after the handshake: ours AND theirs (expanded).
    pub fn negotiate(ours: DFlags, theirs: DFlags) -> DFlags {
        DFlags(ours.expand().0 & theirs.expand().0)
    }

    /// The mandatory bits (of `required`) that `self` lacks, by name.
    pub fn missing(self, required: u64) -> Vec<&'static str> {
        let have = self.expand().0;
        NAMES.iter().filter(|(bit, _)| required & bit != 0 && have & bit == 0).map(|(_, name)| *name).collect()
    }

    /// Whether the connection is visible (both sides published).
    pub fn is_published(self) -> bool {
        self.has(Self::PUBLISHED)
    }

    /// Whether messages use a `131,68` dist header (atom cache or fragments negotiated)
    /// rather than the `112` pass-through envelope (reference §6.1).
    pub fn uses_dist_header(self) -> bool {
        self.0 & (Self::DIST_HDR_ATOM_CACHE | Self::FRAGMENTS) != 0
    }
}

const NAMES: &[(u64, &str)] = &[
    (DFlags::EXTENDED_REFERENCES, "EXTENDED_REFERENCES"),
    (DFlags::FUN_TAGS, "FUN_TAGS"),
    (DFlags::NEW_FUN_TAGS, "NEW_FUN_TAGS"),
    (DFlags::EXTENDED_PIDS_PORTS, "EXTENDED_PIDS_PORTS"),
    (DFlags::EXPORT_PTR_TAG, "EXPORT_PTR_TAG"),
    (DFlags::BIT_BINARIES, "BIT_BINARIES"),
    (DFlags::NEW_FLOATS, "NEW_FLOATS"),
    (DFlags::UTF8_ATOMS, "UTF8_ATOMS"),
    (DFlags::MAP_TAG, "MAP_TAG"),
    (DFlags::BIG_CREATION, "BIG_CREATION"),
    (DFlags::HANDSHAKE_23, "HANDSHAKE_23"),
    (DFlags::UNLINK_ID, "UNLINK_ID"),
    (DFlags::V4_NC, "V4_NC"),
    (DFlags::SPAWN, "SPAWN"),
    (DFlags::DIST_MONITOR, "DIST_MONITOR"),
    (DFlags::DIST_MONITOR_NAME, "DIST_MONITOR_NAME"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otp25_default_negotiates_without_atom_cache() {
        let otp = DFlags(0xD_07DF_7FBD);
        let ours = DFlags::edist_default(true);
        let chosen = DFlags::negotiate(ours, otp);
        assert!(!chosen.has(DFlags::DIST_HDR_ATOM_CACHE));
        assert!(chosen.has(DFlags::FRAGMENTS | DFlags::SPAWN | DFlags::ALIAS | DFlags::PUBLISHED));
        assert!(chosen.missing(DFlags::MANDATORY).is_empty());
        assert!(chosen.uses_dist_header());
    }

    #[test]
    fn digest_flag_expands() {
        let f = DFlags(DFlags::MANDATORY_25_DIGEST);
        assert!(f.missing(DFlags::MANDATORY_25).is_empty());
        assert_eq!(DFlags(0).missing(DFlags::MANDATORY_25).len(), 11);
    }
}
