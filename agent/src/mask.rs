//! TEMPORARY interface copy while the engine is written elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    Redact,
    Partial,
    Hash,
    Null,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Card,
    Email,
    Phone,
    UsSsn,
    Iban,
    Jwt,
    AwsKey,
    GithubToken,
    SlackToken,
    Custom,
}
#[derive(Debug, Clone, Default)]
pub struct ProfileSpec {
    pub name: String,
    pub columns: Vec<(String, Style)>,
    pub detectors: Vec<(Detector, Style)>,
    pub custom: Vec<(String, String, Style)>,
    pub hash_key: [u8; 32],
}
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("masking profile {profile}: regex {name:?}: {message}")]
    BadRegex { profile: String, name: String, message: String },
}
#[derive(Debug)]
pub struct Profile {
    name: String,
}
impl Profile {
    pub fn compile(spec: &ProfileSpec) -> Result<Self, MaskError> {
        Ok(Self { name: spec.name.clone() })
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn column_style(&self, _t: Option<&str>, _c: &str) -> Option<Style> {
        None
    }
}
