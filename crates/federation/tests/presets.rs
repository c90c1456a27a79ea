//! Each OpenID Connect preset against the provider's published discovery document (stored in
//! `tests/fixtures/discovery`, see SOURCES.md there): the issuer the preset computes is the one
//! the document names, and the document passes the same check `grantline serve` runs at start
//! (`check_discovery`), giving the endpoints, an asymmetric ID-token algorithm, and the way
//! the provider wants the client secret.

use grantline_federation::config::{Flavor, Kind};
use grantline_federation::upstream::check_discovery;
use grantline_federation::{ProviderConfig, presets};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/discovery/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn preset(preset: &str, f: impl FnOnce(&mut ProviderConfig)) -> grantline_federation::Provider {
    let mut c = ProviderConfig {
        id: preset.into(),
        preset: Some(preset.into()),
        client_id: "client".into(),
        ..Default::default()
    };
    f(&mut c);
    presets::apply(&c).unwrap()
}

struct Expect {
    authorization: &'static str,
    token: &'static str,
    userinfo: &'static str,
    secret_in_body: bool,
    iss_parameter: bool,
}

fn check(name: &str, p: grantline_federation::Provider, e: Expect) {
    assert_eq!(p.kind, Kind::Oidc, "{name}");
    let doc = fixture(name);
    let d = check_discovery(&p, &doc).unwrap_or_else(|err| panic!("{name}: {err}"));
    assert_eq!(d.issuer, doc["issuer"].as_str().unwrap(), "{name}");
    assert_eq!(d.authorization_endpoint, e.authorization, "{name}");
    assert_eq!(d.token_endpoint, e.token, "{name}");
    assert_eq!(d.userinfo_endpoint.as_deref(), Some(e.userinfo), "{name}");
    assert!(!d.algorithms.is_empty(), "{name}");
    assert_eq!(
        d.secret_in_body, e.secret_in_body,
        "{name}: client authentication"
    );
    assert_eq!(d.iss_parameter, e.iss_parameter, "{name}: RFC 9207");
    // The scopes the preset asks for are ones the provider lists (when it lists them).
    if let Some(listed) = doc["scopes_supported"].as_array() {
        let listed: Vec<&str> = listed.iter().filter_map(Value::as_str).collect();
        for s in &p.scopes {
            // Okta's `groups` is a custom scope an administrator adds; Salesforce lists its
            // scopes but not every alias.
            if !(name == "okta" && s == "groups") {
                assert!(
                    listed.contains(&s.as_str()),
                    "{name}: the preset asks for {s:?}, not listed in {listed:?}"
                );
            }
        }
    }
}

#[test]
fn google() {
    let p = preset("google", |_| {});
    assert_eq!(p.issuer.as_deref(), Some(presets::GOOGLE_ISSUER));
    check(
        "google",
        p,
        Expect {
            authorization: "https://accounts.google.com/o/oauth2/v2/auth",
            token: "https://oauth2.googleapis.com/token",
            userinfo: "https://openidconnect.googleapis.com/v1/userinfo",
            secret_in_body: false,
            iss_parameter: false,
        },
    );
}

/// Google gives a refresh token only at a consent: where Grantline keeps the person's tokens,
/// each sign-in asks for one.
#[test]
fn google_asks_for_consent_where_tokens_are_kept() {
    let params = |f: fn(&mut ProviderConfig)| preset("google", f).authorization_params;
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(params(|_| {}), vec![pair("access_type", "offline")]);
    for kept in [
        (|c: &mut ProviderConfig| c.store_upstream_token = true) as fn(&mut ProviderConfig),
        |c| c.check_upstream_on_refresh = true,
    ] {
        assert_eq!(
            params(kept),
            vec![pair("access_type", "offline"), pair("prompt", "consent")]
        );
    }
}

#[test]
fn microsoft_multi_tenant() {
    let p = preset("microsoft", |c| c.tenant = Some("organizations".into()));
    assert_eq!(p.flavor, Flavor::Microsoft);
    check(
        "microsoft-organizations",
        p,
        Expect {
            authorization: "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize",
            token: "https://login.microsoftonline.com/organizations/oauth2/v2.0/token",
            userinfo: "https://graph.microsoft.com/oidc/userinfo",
            secret_in_body: false,
            iss_parameter: false,
        },
    );
    // The template is accepted only for Microsoft's multi-tenant endpoints: a single-tenant
    // configuration must see its own tenant's issuer.
    let single = preset("microsoft", |c| {
        c.tenant = Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into())
    });
    let err = check_discovery(&single, &fixture("microsoft-organizations")).unwrap_err();
    assert!(err.to_string().contains("names the issuer"), "{err}");
    // Personal accounts: `consumers` is one tenant, whose issuer its discovery document and
    // ID tokens name (there is no template to match).
    let consumers = preset("microsoft", |c| c.tenant = Some("consumers".into()));
    assert_eq!(
        consumers.issuer.as_deref(),
        Some("https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0")
    );
}

#[test]
fn okta() {
    let p = preset("okta", |c| {
        c.domain = Some("https://dev-05054243.okta.com/oauth2/default/".into())
    });
    check(
        "okta",
        p,
        Expect {
            authorization: "https://dev-05054243.okta.com/oauth2/default/v1/authorize",
            token: "https://dev-05054243.okta.com/oauth2/default/v1/token",
            userinfo: "https://dev-05054243.okta.com/oauth2/default/v1/userinfo",
            secret_in_body: false,
            iss_parameter: false,
        },
    );
    // The org authorization server is another issuer: the mistake is named.
    let org = preset("okta", |c| {
        c.domain = Some("https://dev-05054243.okta.com".into())
    });
    assert!(check_discovery(&org, &fixture("okta")).is_err());
}

#[test]
fn keycloak() {
    let p = preset("keycloak", |c| {
        c.server_url = Some("http://localhost:8080".into());
        c.realm = Some("znaphub".into());
    });
    check(
        "keycloak",
        p,
        Expect {
            authorization: "http://localhost:8080/realms/znaphub/protocol/openid-connect/auth",
            token: "http://localhost:8080/realms/znaphub/protocol/openid-connect/token",
            userinfo: "http://localhost:8080/realms/znaphub/protocol/openid-connect/userinfo",
            secret_in_body: false,
            iss_parameter: true,
        },
    );
    // The wrong realm, the classic first-setup mistake.
    let wrong = preset("keycloak", |c| {
        c.server_url = Some("http://localhost:8080".into());
        c.realm = Some("master".into());
    });
    let err = check_discovery(&wrong, &fixture("keycloak")).unwrap_err();
    assert!(
        err.to_string().contains("check the URL, realm or tenant"),
        "{err}"
    );
}

/// The discovery document says where the client secret, the code, the verifier and the
/// user's tokens go: an endpoint in plain HTTP off the machine is refused, whichever it is.
#[test]
fn endpoints_the_document_names_are_as_safe_as_the_issuer() {
    let p = preset("okta", |c| {
        c.domain = Some("https://dev-05054243.okta.com/oauth2/default/".into())
    });
    for field in [
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
    ] {
        let mut doc = fixture("okta");
        assert!(check_discovery(&p, &doc).is_ok());
        doc[field] = Value::String("http://idp.internal/oauth2/x".into());
        let err = check_discovery(&p, &doc).unwrap_err().to_string();
        assert!(err.contains(field) && err.contains("not https"), "{err}");
    }
}

#[test]
fn salesforce() {
    let p = preset("salesforce", |_| {});
    assert_eq!(p.issuer.as_deref(), Some(presets::SALESFORCE_LOGIN));
    check(
        "salesforce",
        p,
        Expect {
            authorization: "https://login.salesforce.com/services/oauth2/authorize",
            token: "https://login.salesforce.com/services/oauth2/token",
            userinfo: "https://login.salesforce.com/services/oauth2/userinfo",
            // Today's document lists client_secret_basic too (a 2018 copy did not).
            secret_in_body: false,
            iss_parameter: false,
        },
    );
}

/// GitHub and Atlassian publish no discovery document: their presets' endpoints are checked
/// against the endpoints their documentation gives (`oauth2-endpoints.json`, with sources).
#[test]
fn github_and_atlassian_presets_use_the_documented_endpoints() {
    let doc = fixture("oauth2-endpoints");
    let text = |v: &Value| v.as_str().unwrap_or_else(|| panic!("{v}")).to_string();
    let gh = preset("github", |_| {});
    let g = &doc["github"];
    assert_eq!((gh.kind, gh.flavor), (Kind::OAuth2, Flavor::GitHub));
    assert_eq!(
        gh.authorization_url,
        Some(text(&g["authorization_endpoint"]))
    );
    assert_eq!(gh.token_url, Some(text(&g["token_endpoint"])));
    assert_eq!(gh.userinfo_url, Some(text(&g["user_endpoint"])));
    assert_eq!(gh.api_url, Some(text(&g["api_base"])));
    // The calls made with the API base are the documented ones, with the scopes they need.
    for (endpoint, scope) in [
        ("emails_endpoint", "user:email"),
        ("orgs_endpoint", "read:org"),
        ("teams_endpoint", "read:org"),
    ] {
        assert!(
            text(&g[endpoint]).starts_with(&text(&g["api_base"])),
            "{endpoint}"
        );
        assert!(
            gh.scopes.iter().any(|s| s == scope),
            "{scope} in {:?}",
            gh.scopes
        );
        assert!(
            g["scopes"][scope].is_string(),
            "{scope} is a documented scope"
        );
    }
    // GitHub Enterprise: the API is taken from userinfo_url, which must end in `/user`; any
    // other form would send the person's token to github.com's API.
    let ghe = preset("github", |c| {
        c.userinfo_url = Some("https://ghe.corp.example/api/v3/user".into())
    });
    assert_eq!(
        ghe.api_url.as_deref(),
        Some("https://ghe.corp.example/api/v3")
    );
    for odd in [
        "https://ghe.corp.example/api/v3/user/",
        "https://ghe.corp.example/api/v3/users",
        "https://ghe.corp.example/api/v3//user",
    ] {
        let c = ProviderConfig {
            id: "ghe".into(),
            preset: Some("github".into()),
            client_id: "client".into(),
            userinfo_url: Some(odd.into()),
            ..Default::default()
        };
        let e = presets::apply(&c).unwrap_err().to_string();
        assert!(e.contains("/user endpoint"), "{odd}: {e}");
    }
    let at = preset("atlassian", |_| {});
    let a = &doc["atlassian"];
    assert_eq!((at.kind, at.flavor), (Kind::OAuth2, Flavor::Atlassian));
    assert_eq!(
        at.authorization_url,
        Some(text(&a["authorization_endpoint"]))
    );
    // The token and user endpoints are not on a page of Atlassian's that could be read here
    // (the fixture says where they were seen): they are on the documented hosts.
    let host = |u: &Option<String>| {
        url::Url::parse(u.as_deref().unwrap())
            .unwrap()
            .host_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(host(&at.token_url), host(&at.authorization_url));
    assert_eq!(
        host(&at.userinfo_url),
        url::Url::parse(&text(&a["api_base"]))
            .unwrap()
            .host_str()
            .unwrap()
    );
}
