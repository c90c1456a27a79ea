//! Who may sign in through a provider, and with which role: pure functions of the provider's
//! settings and the upstream identity, applied at every sign-in.

use crate::config::{Flavor, Provider};
use crate::identity::UpstreamIdentity;

/// Why a person the upstream vouched for may not sign in here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    #[error("the upstream gave no verified email, and this provider only admits some domains")]
    NoVerifiedEmail,
    #[error("the email's domain is not one this provider admits")]
    Domain,
    #[error("the account is not managed by a Google Workspace domain this provider admits (hd)")]
    HostedDomain,
    #[error("the tenant is not one this provider admits")]
    Tenant,
    #[error("the person is not a member of an organisation this provider admits")]
    Organization,
}

impl NotAllowed {
    /// A short stable code for events and pages.
    pub fn code(&self) -> &'static str {
        match self {
            NotAllowed::NoVerifiedEmail => "no_verified_email",
            NotAllowed::Domain => "email_domain_not_allowed",
            NotAllowed::HostedDomain => "hosted_domain_not_allowed",
            NotAllowed::Tenant => "tenant_not_allowed",
            NotAllowed::Organization => "organization_not_allowed",
        }
    }
}

/// Checks the provider's admission rules: email domains, tenants, organisations. At Google
/// a domain is admitted by the `hd` (hosted domain) claim as well as the email: any Google
/// account can carry a verified address at any domain, but only the domain's Workspace
/// accounts carry its `hd`.
pub fn admitted(p: &Provider, who: &UpstreamIdentity) -> Result<(), NotAllowed> {
    if !p.allowed_email_domains.is_empty() {
        let email = who.email.as_deref().ok_or(NotAllowed::NoVerifiedEmail)?;
        let domain = email
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        if !p.allowed_email_domains.contains(&domain) {
            return Err(NotAllowed::Domain);
        }
        if p.flavor == Flavor::Google {
            let hd = who
                .claims
                .get("hd")
                .and_then(|v| v.first())
                .map(|d| d.to_ascii_lowercase());
            if !hd.is_some_and(|d| p.allowed_email_domains.contains(&d)) {
                return Err(NotAllowed::HostedDomain);
            }
        }
    }
    if !p.allowed_tenants.is_empty() {
        let tids = who.claims.get("tid").map(Vec::as_slice).unwrap_or_default();
        if !tids.iter().any(|t| p.allowed_tenants.contains(t)) {
            return Err(NotAllowed::Tenant);
        }
    }
    if !p.allowed_organizations.is_empty() {
        let orgs = who
            .claims
            .get("orgs")
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !orgs
            .iter()
            .any(|o| p.allowed_organizations.contains(&o.to_ascii_lowercase()))
        {
            return Err(NotAllowed::Organization);
        }
    }
    Ok(())
}

/// The role the mapping gives, and the claim that gave it (`groups=mcp-admins`), or the
/// provider's default role and `None`. First matching rule wins.
pub fn role_for(p: &Provider, who: &UpstreamIdentity) -> (String, Option<String>) {
    for rule in &p.role_mapping {
        // `email` is the verified address only: the raw claim may be one the provider does
        // not vouch for (`email_verified` false, or Entra's, which is never verified).
        let holds = if rule.claim == "email" {
            who.email
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(&rule.value))
        } else {
            who.claims
                .get(&rule.claim)
                .is_some_and(|vals| vals.iter().any(|v| v == &rule.value))
        };
        if holds {
            return (
                rule.role.clone(),
                Some(format!("{}={}", rule.claim, rule.value)),
            );
        }
    }
    (p.default_role.clone(), None)
}

/// Claim paths the rules name, so that nested ones (`realm_access.roles`) are extracted.
pub fn rule_paths(p: &Provider) -> Vec<&str> {
    p.role_mapping.iter().map(|r| r.claim.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProviderConfig, RoleRule};

    fn config(f: impl FnOnce(&mut ProviderConfig)) -> ProviderConfig {
        let mut c = ProviderConfig {
            id: "idp".into(),
            kind: Some("oidc".into()),
            issuer: Some("https://idp.example".into()),
            client_id: "c".into(),
            client_secret_env: Some("X".into()),
            ..Default::default()
        };
        f(&mut c);
        c
    }

    fn provider(f: impl FnOnce(&mut ProviderConfig)) -> Provider {
        config(f).resolve(&|_| Some("s".into())).unwrap()
    }

    fn who(email: Option<&str>, claims: &[(&str, &[&str])]) -> UpstreamIdentity {
        UpstreamIdentity {
            subject: "s1".into(),
            issuer: "https://idp.example".into(),
            email: email.map(String::from),
            name: None,
            username: None,
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }

    #[test]
    fn domains_tenants_and_organisations_admit_only_their_members() {
        let p = provider(|c| c.allowed_email_domains = vec!["@Example.com".into()]);
        assert_eq!(admitted(&p, &who(Some("a@EXAMPLE.com"), &[])), Ok(()));
        assert_eq!(
            admitted(&p, &who(Some("a@example.com.evil"), &[])),
            Err(NotAllowed::Domain)
        );
        assert_eq!(
            admitted(&p, &who(None, &[])),
            Err(NotAllowed::NoVerifiedEmail)
        );
        let p = provider(|c| c.allowed_tenants = vec!["t1".into()]);
        assert_eq!(admitted(&p, &who(None, &[("tid", &["t1"])])), Ok(()));
        assert_eq!(
            admitted(&p, &who(None, &[("tid", &["t2"])])),
            Err(NotAllowed::Tenant)
        );
        let p = provider(|c| c.allowed_organizations = vec!["Acme".into()]);
        assert_eq!(admitted(&p, &who(None, &[("orgs", &["acme"])])), Ok(()));
        assert_eq!(
            admitted(&p, &who(None, &[("orgs", &["other"])])),
            Err(NotAllowed::Organization)
        );
    }

    #[test]
    fn at_google_a_domain_is_admitted_by_its_hosted_domain_claim() {
        let p = provider(|c| {
            c.kind = None;
            c.issuer = None;
            c.preset = Some("google".into());
            c.allowed_email_domains = vec!["example.com".into()];
        });
        // A Workspace account of the domain.
        let member = who(Some("a@example.com"), &[("hd", &["example.com"])]);
        assert_eq!(admitted(&p, &member), Ok(()));
        // A consumer Google account that registered an address at the domain: verified
        // email, but no hd (or another one).
        assert_eq!(
            admitted(&p, &who(Some("a@example.com"), &[])),
            Err(NotAllowed::HostedDomain)
        );
        assert_eq!(
            admitted(&p, &who(Some("a@example.com"), &[("hd", &["other.org"])])),
            Err(NotAllowed::HostedDomain)
        );
        // Google configured by hand (kind "oidc" and its issuer) is held to the same rule.
        let by_hand = provider(|c| {
            c.kind = Some("oidc".into());
            c.preset = None;
            c.issuer = Some("https://accounts.google.com".into());
            c.allowed_email_domains = vec!["example.com".into()];
        });
        assert_eq!(admitted(&by_hand, &member), Ok(()));
        assert_eq!(
            admitted(&by_hand, &who(Some("a@example.com"), &[])),
            Err(NotAllowed::HostedDomain)
        );
        // Elsewhere the email's domain is the rule.
        let p = provider(|c| c.allowed_email_domains = vec!["example.com".into()]);
        assert_eq!(admitted(&p, &who(Some("a@example.com"), &[])), Ok(()));
    }

    #[test]
    fn the_first_matching_rule_gives_the_role_and_names_the_claim() {
        let p = provider(|c| {
            c.default_role = Some("user".into());
            c.role_mapping = vec![
                RoleRule {
                    claim: "groups".into(),
                    value: "mcp-admins".into(),
                    role: "admin".into(),
                },
                RoleRule {
                    claim: "groups".into(),
                    value: "auditors".into(),
                    role: "auditor".into(),
                },
            ];
        });
        assert_eq!(
            role_for(&p, &who(None, &[("groups", &["auditors", "mcp-admins"])])),
            ("admin".into(), Some("groups=mcp-admins".into()))
        );
        assert_eq!(
            role_for(&p, &who(None, &[("groups", &["auditors"])])),
            ("auditor".into(), Some("groups=auditors".into()))
        );
        assert_eq!(role_for(&p, &who(None, &[])), ("user".into(), None));
    }

    #[test]
    fn a_rule_on_email_is_a_rule_on_the_verified_email_and_chosen_claims_are_refused() {
        let rule = |claim: &str, value: &str| RoleRule {
            claim: claim.into(),
            value: value.into(),
            role: "admin".into(),
        };
        let p = provider(|c| c.role_mapping = vec![rule("email", "boss@corp.example")]);
        // The raw claim says so, but the provider does not vouch for it: no role.
        let unverified = who(None, &[("email", &["boss@corp.example"])]);
        assert_eq!(role_for(&p, &unverified), ("user".into(), None));
        let verified = who(Some("Boss@Corp.example"), &[]);
        assert_eq!(role_for(&p, &verified).0, "admin");
        // A name, a login name or a profile field is whatever the person typed in.
        for claim in ["preferred_username", "name", "login", "company"] {
            let mut c = config(|c| c.role_mapping = vec![rule(claim, "boss")]);
            let e = c.resolve(&|_| Some("s".into())).unwrap_err().to_string();
            assert!(e.contains(claim) && e.contains("sets that claim"), "{e}");
            c.role_mapping = vec![rule("groups", "boss")];
            assert!(c.resolve(&|_| Some("s".into())).is_ok());
        }
    }

    #[test]
    fn github_enterprise_urls_are_set_together() {
        let github = |f: &dyn Fn(&mut ProviderConfig)| {
            let mut c = ProviderConfig {
                id: "ghe".into(),
                preset: Some("github".into()),
                client_id: "c".into(),
                client_secret_env: Some("X".into()),
                allow_any_account: true,
                ..Default::default()
            };
            f(&mut c);
            c.resolve(&|_| Some("s".into()))
        };
        assert!(github(&|_| {}).is_ok(), "github.com");
        let e = github(&|c| {
            c.authorization_url = Some("https://ghe.corp.example/login/oauth/authorize".into());
            c.token_url = Some("https://ghe.corp.example/login/oauth/access_token".into());
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("together"), "{e}");
        assert!(
            github(&|c| {
                c.authorization_url = Some("https://ghe.corp.example/login/oauth/authorize".into());
                c.token_url = Some("https://ghe.corp.example/login/oauth/access_token".into());
                c.userinfo_url = Some("https://ghe.corp.example/api/v3/user".into());
            })
            .is_ok()
        );
    }
}
