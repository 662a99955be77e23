//! `gatehouse login`, `whoami`, `logout`: any user on the host.
//!
//! `login` asks the agent for the IdP's parameters and a nonce made for the
//! caller's uid, runs the OAuth 2.0 device authorization grant (RFC 8628)
//! with the IdP (the user opens the verification URL anywhere, types the
//! code, authenticates), then hands the ID token and refresh token to the
//! agent, which verifies them itself and binds the identity to the uid.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreDeviceAuthorizationResponse,
    CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, ClientId, ClientSecret, DeviceAuthorizationUrl, IssuerUrl, OAuth2TokenResponse,
    ProviderMetadata, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};

use super::fail;
use crate::control::{self, Request, Response};
use crate::identity::oidc::{BindingView, chain, client_with_ca};
use crate::settings;

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Do not draw the verification URL as a QR code.
    #[arg(long)]
    pub no_qr: bool,
}

#[derive(Debug, Args)]
pub struct WhoamiArgs {
    #[arg(long, default_value = settings::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// The discovery document's `device_authorization_endpoint`.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct DeviceEndpoint {
    device_authorization_endpoint: DeviceAuthorizationUrl,
}

impl AdditionalProviderMetadata for DeviceEndpoint {}

type DeviceProviderMetadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

async fn ask(socket: &std::path::Path, req: &Request) -> Result<Response, String> {
    match control::request(socket, req).await {
        Ok(Response::Error { message }) => Err(message),
        Ok(r) => Ok(r),
        Err(e) => Err(format!("{e} (is the agent running?)")),
    }
}

pub async fn login(a: &LoginArgs) -> ExitCode {
    let params = match ask(&a.control_socket, &Request::LoginStart).await {
        Ok(Response::LoginParams(p)) => p,
        Ok(other) => return fail(format_args!("unexpected answer from the agent: {other:?}")),
        Err(e) => return fail(e),
    };
    let http = match client_with_ca(params.ca_pem.as_deref().map(str::as_bytes)) {
        Ok(h) => h,
        Err(e) => return fail(format_args!("identity provider: {e}")),
    };
    let issuer = match IssuerUrl::new(params.issuer.clone()) {
        Ok(i) => i,
        Err(e) => return fail(format_args!("issuer {}: {e}", params.issuer)),
    };
    let metadata = match DeviceProviderMetadata::discover_async(issuer, &http).await {
        Ok(m) => m,
        Err(e) => return fail(format_args!("identity provider {}: {}", params.issuer, chain(&e))),
    };
    let endpoint = metadata.additional_metadata().device_authorization_endpoint.clone();
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(params.client_id.clone()),
        params.client_secret.clone().map(ClientSecret::new),
    )
    .set_device_authorization_url(endpoint);
    let details: CoreDeviceAuthorizationResponse = match client
        .exchange_device_code()
        .add_scopes(params.scopes.iter().filter(|s| *s != "openid").cloned().map(Scope::new))
        .add_extra_param("nonce", params.nonce.clone())
        .request_async(&http)
        .await
    {
        Ok(d) => d,
        Err(e) => return fail(format_args!("the identity provider refused the device login: {}", chain(&e))),
    };
    let uri = details.verification_uri().to_string();
    let code = details.user_code().secret().clone();
    println!("To log in, open {uri}");
    println!("and enter the code: {code}");
    if let Some(complete) = details.verification_uri_complete() {
        println!("(or open {} , which carries the code)", complete.secret());
        if !a.no_qr && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            print_qr(complete.secret());
        }
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("waiting for you to approve the login at {uri} …"));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let polled = match client.exchange_device_access_token(&details) {
        Ok(req) => req.request_async(&http, tokio::time::sleep, None).await.map_err(|e| chain(&e)),
        Err(e) => Err(e.to_string()),
    };
    spinner.finish_and_clear();
    let token = match polled {
        Ok(t) => t,
        Err(e) => return fail(format_args!("the login did not complete: {e}")),
    };
    let Some(id_token) = token.id_token() else {
        return fail("the identity provider gave no ID token (is `openid` among the scopes it allows this client?)");
    };
    let req = Request::Login {
        id_token: id_token.to_string(),
        refresh_token: token.refresh_token().map(|r| r.secret().clone()),
    };
    match ask(&a.control_socket, &req).await {
        Ok(Response::LoggedIn { binding }) => {
            println!("Logged in: {}", describe(&binding));
            ExitCode::SUCCESS
        }
        Ok(other) => fail(format_args!("unexpected answer from the agent: {other:?}")),
        Err(e) => fail(format_args!("the agent refused the login: {e}")),
    }
}

fn print_qr(text: &str) {
    use qrcode::render::unicode::Dense1x2;
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => {
            let image = code.render::<Dense1x2>().dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).build();
            println!("{image}");
        }
        Err(e) => eprintln!("(no QR code: {e})"),
    }
}

fn when(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| t.to_zoned_datetime(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S %Z").to_string())
        .unwrap_or_else(|_| t.to_string())
}

fn describe(b: &BindingView) -> String {
    let i = &b.identity;
    let groups: Vec<&str> = i.groups.iter().map(|g| g.as_str()).collect();
    let email = match (&i.email, i.email_verified) {
        (Some(e), true) => format!(" <{e}>"),
        (Some(e), false) => format!(" <{e}, not verified by the IdP>"),
        (None, _) => String::new(),
    };
    let until = if b.refreshes {
        format!("until {} (refreshed by the agent, at most until {})", when(i.expires), when(b.hard_end))
    } else {
        format!("until {}", when(i.expires))
    };
    format!(
        "{}{email}, groups [{}], authenticated {}{}{}, {until}",
        i.subject,
        groups.join(", "),
        when(i.auth_time),
        i.acr.as_deref().map(|a| format!(", acr {a}")).unwrap_or_default(),
        if i.amr.is_empty() { String::new() } else { format!(", amr [{}]", i.amr.join(", ")) },
    )
}

pub async fn whoami(a: &WhoamiArgs) -> ExitCode {
    let r = match ask(&a.control_socket, &Request::WhoAmI).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let Response::WhoAmI { uid, user, groups, identity_configured, binding } = r else {
        return fail(format_args!("unexpected answer from the agent: {r:?}"));
    };
    if a.json {
        let v = serde_json::json!({ "uid": uid, "user": user, "groups": groups, "identity_configured": identity_configured, "login": binding });
        println!("{v}");
        return ExitCode::SUCCESS;
    }
    println!("user:   {} (uid {uid}), groups [{}]", user.as_deref().unwrap_or("-"), groups.join(", "));
    match (&binding, identity_configured) {
        (Some(b), _) => println!("login:  {}", describe(b)),
        (None, true) => println!("login:  none (run `gatehouse login`)"),
        (None, false) => println!("login:  none (this host's policy has no identity provider)"),
    }
    ExitCode::SUCCESS
}

pub async fn logout(a: &WhoamiArgs) -> ExitCode {
    match ask(&a.control_socket, &Request::Logout).await {
        Ok(Response::LoggedOut { was_logged_in }) => {
            if a.json {
                println!("{}", serde_json::json!({ "was_logged_in": was_logged_in }));
            } else if was_logged_in {
                println!("Logged out: new connections no longer carry your identity.");
            } else {
                println!("You were not logged in.");
            }
            ExitCode::SUCCESS
        }
        Ok(other) => fail(format_args!("unexpected answer from the agent: {other:?}")),
        Err(e) => fail(e),
    }
}
