//! Provider configuration: presets fill in what the operator need not write, and every
//! mistake a first setup makes is refused with a message that names the provider and the fix.

use grantline_federation::config::{Flavor, Kind, Provisioning};
use grantline_federation::{ProviderConfig, presets};

fn parse(toml_text: &str) -> ProviderConfig {
    #[derive(serde::Deserialize)]
    struct File {
        identity_providers: Vec<ProviderConfig>,
    }
    let f: File = toml::from_str(toml_text).unwrap();
    f.identity_providers.into_iter().next().unwrap()
}

fn env(k: &str) -> Option<String> {
    (k == "SECRET").then(|| "s3cret".to_string())
}

fn err(toml_text: &str) -> String {
    parse(toml_text).resolve(&env).unwrap_err().to_string()
}

#[test]
fn presets_fill_in_urls_scopes_and_claims() {
    let gh = parse(
        r#"[[identity_providers]]
id = "github"
preset = "github"
client_id = "Iv1.x"
client_secret_env = "SECRET"
allow_any_account = true"#,
    )
    .resolve(&env)
    .unwrap();
    assert_eq!((gh.kind, gh.flavor), (Kind::OAuth2, Flavor::GitHub));
    assert_eq!(
        gh.authorization_url.as_deref(),
        Some(presets::GITHUB_AUTHORIZE)
    );
    assert_eq!(gh.token_url.as_deref(), Some(presets::GITHUB_TOKEN));
    assert_eq!(
        gh.userinfo_url.as_deref(),
        Some("https://api.github.com/user")
    );
    assert_eq!(gh.api_url.as_deref(), Some("https://api.github.com"));
    assert_eq!(
        (gh.subject_field.as_str(), gh.username_field.as_str()),
        ("id", "login")
    );
    assert!(gh.scopes.contains(&"read:org".to_string()));
    assert_eq!(gh.client_secret.0, "s3cret");
    assert_eq!(gh.display_name, "GitHub");
    assert_eq!(gh.provisioning, Provisioning::JustInTime);

    let kc = parse(
        r#"[[identity_providers]]
id = "kc"
preset = "keycloak"
server_url = "https://sso.example/"
realm = "staff"
client_id = "grantline"
client_secret_env = "SECRET""#,
    )
    .resolve(&env)
    .unwrap();
    assert_eq!(
        kc.issuer.as_deref(),
        Some("https://sso.example/realms/staff")
    );

    let ms = parse(
        r#"[[identity_providers]]
id = "entra"
preset = "microsoft"
client_id = "b1"
client_secret_env = "SECRET"
allow_any_account = true"#,
    )
    .resolve(&env)
    .unwrap();
    assert_eq!(
        ms.issuer.as_deref(),
        Some("https://login.microsoftonline.com/organizations/v2.0")
    );
    let atl = parse(
        r#"[[identity_providers]]
id = "atl"
preset = "atlassian"
client_id = "a"
client_secret_env = "SECRET"
allow_any_account = true
scopes = ["read:me", "read:jira-work", "offline_access"]"#,
    )
    .resolve(&env)
    .unwrap();
    assert!(
        atl.authorization_params
            .contains(&("audience".into(), "api.atlassian.com".into()))
    );
    assert_eq!(atl.scopes, ["read:me", "read:jira-work", "offline_access"]);
    // A parameter the file gives takes the place of the preset's: one `prompt`, not two.
    let google = parse(
        r#"[[identity_providers]]
id = "google"
preset = "google"
client_id = "g"
client_secret_env = "SECRET"
allowed_email_domains = ["example.com"]
store_upstream_token = true
authorization_params = { prompt = "select_account consent" }"#,
    )
    .resolve(&env)
    .unwrap();
    assert_eq!(
        google.authorization_params,
        [
            ("access_type".to_string(), "offline".to_string()),
            ("prompt".to_string(), "select_account consent".to_string())
        ]
    );
}

#[test]
fn mistakes_are_refused_with_the_fix() {
    let base = "[[identity_providers]]\nclient_id = \"c\"\n";
    for (extra, want) in [
        (
            "id = \"Bad Id\"\npreset = \"google\"\nclient_secret_env = \"SECRET\"",
            "ids are 1 to",
        ),
        (
            "id = \"g\"\npreset = \"gogle\"\nclient_secret_env = \"SECRET\"",
            "unknown preset \"gogle\"",
        ),
        (
            "id = \"g\"\nkind = \"saml\"\nclient_secret_env = \"SECRET\"",
            "kind must be \"oidc\" or \"oauth2\"",
        ),
        (
            "id = \"g\"\npreset = \"google\"",
            "a client secret is required",
        ),
        (
            "id = \"g\"\npreset = \"google\"\nclient_secret_env = \"UNSET\"",
            "UNSET is not set",
        ),
        (
            "id = \"k\"\npreset = \"keycloak\"\nserver_url = \"https://sso\"\nclient_secret_env = \"SECRET\"",
            "needs realm",
        ),
        (
            "id = \"o\"\nkind = \"oidc\"\nissuer = \"http://idp.example\"\nclient_secret_env = \"SECRET\"",
            "must be https",
        ),
        (
            "id = \"o\"\nkind = \"oidc\"\nclient_secret_env = \"SECRET\"",
            "needs issuer",
        ),
        (
            "id = \"o\"\nkind = \"oauth2\"\nauthorization_url = \"https://a.example\"\nclient_secret_env = \"SECRET\"",
            "needs authorization_url, token_url and userinfo_url",
        ),
        (
            "id = \"o\"\npreset = \"okta\"\ndomain = \"https://x.okta.com\"\nprovisioning = \"manual\"\nclient_secret_env = \"SECRET\"",
            "provisioning must be",
        ),
        (
            "id = \"g\"\npreset = \"google\"\nclient_secret_env = \"SECRET\"\nclock_skew_secs = 3600",
            "clock_skew_secs is 0 to 600 seconds, not 3600",
        ),
        (
            "id = \"g\"\npreset = \"google\"\nclient_secret_env = \"SECRET\"\njwks_cache_secs = 1",
            "jwks_cache_secs is 10 to 86400 seconds, not 1",
        ),
        (
            "id = \"g\"\npreset = \"google\"\nclient_secret_env = \"SECRET\"\njwks_cache_secs = 604800",
            "jwks_cache_secs is 10 to 86400 seconds",
        ),
        (
            "id = \"g\"\npreset = \"google\"\nclient_secret_env = \"SECRET\"\nupstream_check_cache_secs = 31536000",
            "upstream_check_cache_secs is 0 to 86400 seconds",
        ),
    ] {
        let e = err(&format!("{base}{extra}"));
        assert!(e.contains(want), "{extra}: {e}");
    }
    // An unknown field is a parse error, not silently ignored.
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct File {
        identity_providers: Vec<ProviderConfig>,
    }
    let bad = toml::from_str::<File>(
        "[[identity_providers]]\nid = \"g\"\nclient_id = \"c\"\nclient_secert_env = \"X\"",
    );
    assert!(bad.unwrap_err().to_string().contains("client_secert_env"));
}

#[test]
fn a_provider_open_to_anyone_needs_an_admission_rule_to_create_users() {
    let cfg = |extra: &str| {
        format!(
            "[[identity_providers]]\nid = \"p\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"\n{extra}"
        )
    };
    // Anyone can have a GitHub, Google, Atlassian or Salesforce account, or a Microsoft one
    // on the multi-tenant endpoints: just-in-time provisioning alone would let them all in.
    for preset in [
        "preset = \"github\"",
        "preset = \"google\"",
        "preset = \"atlassian\"",
        "preset = \"salesforce\"",
        "preset = \"microsoft\"",
        "preset = \"microsoft\"\ntenant = \"common\"",
        // The same providers written out by hand, without their preset.
        "kind = \"oidc\"\nissuer = \"https://accounts.google.com\"",
        "kind = \"oidc\"\nissuer = \"https://login.microsoftonline.com/common/v2.0\"",
    ] {
        let e = err(&cfg(preset));
        assert!(e.contains("allow_any_account = true"), "{preset}: {e}");
        assert!(e.contains("identity provider \"p\""), "{e}");
    }
    // GitHub or Google as a hand-written kind = "oauth2" would skip what their presets check
    // (verified email, organisations, hosted domain): refused whatever the rules.
    for (url, preset) in [
        ("https://github.com/login/oauth/authorize", "github"),
        ("https://accounts.google.com/o/oauth2/v2/auth", "google"),
    ] {
        let e = err(&cfg(&format!(
            "kind = \"oauth2\"\nauthorization_url = \"{url}\"\ntoken_url = \"{url}\"\nuserinfo_url = \"{url}\"\nallowed_email_domains = [\"example.com\"]"
        )));
        assert!(e.contains(&format!("use preset = \"{preset}\"")), "{e}");
    }
    // Any one rule, provisioning of existing users only, or saying so, is enough.
    for ok in [
        "preset = \"github\"\nallowed_organizations = [\"acme\"]",
        "preset = \"google\"\nallowed_email_domains = [\"example.com\"]",
        "preset = \"microsoft\"\nallowed_tenants = [\"72f988bf-86f1-41af-91ab-2d7cd011db47\"]",
        "preset = \"salesforce\"\nprovisioning = \"existing\"",
        "preset = \"atlassian\"\nallow_any_account = true",
        // One tenant's own endpoint, an Okta or Keycloak of the organisation: its people only.
        "preset = \"microsoft\"\ntenant = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"",
        "preset = \"okta\"\ndomain = \"https://acme.okta.com\"",
        "preset = \"keycloak\"\nserver_url = \"https://sso.acme.example\"\nrealm = \"staff\"",
        "kind = \"oidc\"\nissuer = \"https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0\"",
        "kind = \"oidc\"\nissuer = \"https://sso.acme.example/realms/staff\"",
        "kind = \"oidc\"\nissuer = \"https://accounts.google.com\"\nallowed_email_domains = [\"example.com\"]",
    ] {
        assert!(parse(&cfg(ok)).resolve(&env).is_ok(), "{ok}");
    }
}

/// On Microsoft's multi-tenant endpoints each tenant's administrator sets its people's claims:
/// a role mapping (but on `tid`) is refused unless one tenant is admitted.
#[test]
fn role_rules_at_microsofts_multi_tenant_endpoints_need_one_tenant() {
    let cfg = |extra: &str| {
        format!(
            "[[identity_providers]]\nid = \"entra\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"\n{extra}"
        )
    };
    let rule = "role_mapping = [{ claim = \"roles\", value = \"MCP.Admin\", role = \"admin\" }]";
    let (corp, partner) = (
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "0e2b1c9a-5d3f-4c1b-9a8e-2f6d7c4b3a21",
    );
    for refused in [
        format!("preset = \"microsoft\"\nallow_any_account = true\n{rule}"),
        format!(
            "preset = \"microsoft\"\ntenant = \"common\"\nallowed_tenants = [\"{corp}\", \"{partner}\"]\n{rule}"
        ),
        format!(
            "kind = \"oidc\"\nissuer = \"https://login.microsoftonline.com/organizations/v2.0\"\nallow_any_account = true\n{}",
            rule.replace("roles", "groups")
        ),
    ] {
        let e = err(&cfg(&refused));
        assert!(e.contains("admit one tenant"), "{refused}: {e}");
    }
    for ok in [
        format!("preset = \"microsoft\"\nallowed_tenants = [\"{corp}\"]\n{rule}"),
        format!("preset = \"microsoft\"\ntenant = \"{corp}\"\n{rule}"),
        format!(
            "preset = \"microsoft\"\nallow_any_account = true\nrole_mapping = [{{ claim = \"tid\", value = \"{corp}\", role = \"admin\" }}]"
        ),
        "preset = \"microsoft\"\nallow_any_account = true".to_string(),
    ] {
        assert!(parse(&cfg(&ok)).resolve(&env).is_ok(), "{ok}");
    }
}

#[test]
fn the_secret_file_is_read_and_loopback_http_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("secret");
    std::fs::write(&f, "from-a-file\n").unwrap();
    let p = parse(&format!(
        "[[identity_providers]]\nid = \"dev\"\nkind = \"oidc\"\nissuer = \"http://127.0.0.1:8080\"\nclient_id = \"c\"\nclient_secret_file = \"{}\"",
        f.display()
    ))
    .resolve(&env)
    .unwrap();
    assert_eq!(p.client_secret.0, "from-a-file");
    assert!(
        !format!("{p:?}").contains("from-a-file"),
        "Debug hides the secret"
    );
}
