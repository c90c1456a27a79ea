use crate::Resource;

/// Token and code lifetimes, in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifetimes {
    /// Authorization codes (at most 60 s).
    pub code: u64,
    pub access_token: u64,
    /// A refresh token unused this long expires.
    pub refresh_idle: u64,
    /// No refresh token of a family outlives its start by more than this.
    pub refresh_absolute: u64,
    /// How long after a rotation the rotated refresh token is still accepted (a client that
    /// raced itself, or retries after a lost response) before it counts as reuse.
    pub refresh_grace: u64,
    /// A dynamically registered client never used for an authorization ages out after this.
    pub dynamic_client: u64,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            code: 60,
            access_token: 3600,
            refresh_idle: 7 * 86_400,
            refresh_absolute: 30 * 86_400,
            refresh_grace: 30,
            dynamic_client: 86_400,
        }
    }
}

/// What the deciders need to know about this deployment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The issuer identifier, byte-identical everywhere it appears.
    pub issuer: String,
    pub resources: Vec<Resource>,
    pub lifetimes: Lifetimes,
}

impl Settings {
    pub fn resource(&self, requested: &str) -> Option<&Resource> {
        crate::resource::find(&self.resources, requested)
    }
}
