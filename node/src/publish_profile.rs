//! Publish profiles: the `.PublishSettings` XML that Visual Studio (and other
//! tools that read Azure's publish profiles) imports to zip-deploy an app.

use std::path::Path;

/// What a profile names.
#[derive(Debug)]
pub struct Profile<'a> {
    pub app: &'a str,
    /// The app's publishing base URL (`…/apps/{app}/scm`).
    pub scm_url: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    /// Where the app answers (its own address); may be empty.
    pub app_url: &'a str,
}

/// XML attribute text.
fn attr(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The profile, in Azure's shape: one `ZipDeploy` profile whose `publishUrl`
/// is the app's publishing base (a tool posts to `{publishUrl}/api/zipdeploy`).
pub fn render(p: &Profile<'_>) -> String {
    // Azure writes publishUrl as host:port (the tools add https:// and the path);
    // Strom's endpoint carries a path and may be plain HTTP, so it is a full URL.
    format!(
        "<publishData>\n  <publishProfile profileName=\"{app} - Zip Deploy\" publishMethod=\"ZipDeploy\" \
         publishUrl=\"{url}\" userName=\"{user}\" userPWD=\"{pwd}\" destinationAppUrl=\"{dest}\" \
         SQLServerDBConnectionString=\"\" mySQLDBConnectionString=\"\" hostingProviderForumLink=\"\" \
         controlPanelLink=\"\" webSystem=\"WebSites\">\n    <databases />\n  </publishProfile>\n</publishData>\n",
        app = attr(p.app),
        url = attr(p.scm_url),
        user = attr(p.user),
        pwd = attr(p.password),
        dest = attr(p.app_url),
    )
}

/// Write `bytes` to `path`, readable by its owner only (it holds a credential).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    strom_control_plane::durable::write_durably(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_names_the_endpoint_and_the_credential_escaped() {
        let xml = render(&Profile {
            app: "web",
            scm_url: "https://mgmt:7171/apps/web/scm",
            user: "$web",
            password: "a&b<c>\"d",
            app_url: "https://web.example:7071",
        });
        assert!(xml.starts_with("<publishData>"), "{xml}");
        assert!(xml.contains("publishMethod=\"ZipDeploy\""));
        assert!(xml.contains("publishUrl=\"https://mgmt:7171/apps/web/scm\""));
        assert!(xml.contains("userName=\"$web\""));
        assert!(xml.contains("userPWD=\"a&amp;b&lt;c&gt;&quot;d\""));
        assert!(xml.contains("destinationAppUrl=\"https://web.example:7071\""));
    }
}
