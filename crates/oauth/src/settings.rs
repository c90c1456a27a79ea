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

/// The longest an authorization code lives, whatever the configuration says.
pub const MAX_CODE_LIFETIME: u64 = 60;

impl Lifetimes {
    /// The code lifetime in force: the configured one, at most [`MAX_CODE_LIFETIME`].
    pub fn code_lifetime(&self) -> u64 {
        self.code.min(MAX_CODE_LIFETIME)
    }
}

impl Default for Lifetimes {
    /// The rules' own defaults (one place: the fold reads the same values when nothing was
    /// recorded), and an hour for access tokens, a day for unused dynamic clients.
    fn default() -> Self {
        let rules = grantline_state::rules::settings::RuleSettings::default();
        Lifetimes {
            code: rules.code_lifetime,
            access_token: 3600,
            refresh_idle: rules.refresh_idle,
            refresh_absolute: rules.refresh_absolute,
            refresh_grace: rules.refresh_grace,
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
