//! Database URLs: which backend they name, and how to show them without secrets.

/// `url` with its password (if any) replaced by `***`, for logs and error messages.
pub fn redact(url: &str) -> String {
    if let Ok(mut parsed) = ::url::Url::parse(url) {
        if parsed.password().is_some() && parsed.set_password(Some("***")).is_ok() {
            return parsed.to_string();
        }
        if !url.contains("password=") {
            return parsed.to_string();
        }
    }
    redact_by_hand(url)
}

/// Fallback for strings the URL parser refuses: hide everything that could be a secret.
fn redact_by_hand(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    let rest = match rest.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            out.push_str(user);
            if user_info.contains(':') {
                out.push_str(":***");
            }
            out.push('@');
            host
        }
        None => rest,
    };
    match rest.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(rest),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn hides_the_password_of_a_well_formed_url() {
        let shown = redact("postgres://keel:s3cret@db.example:5432/app");
        assert_eq!(shown, "postgres://keel:***@db.example:5432/app");
    }

    #[test]
    fn hides_a_password_given_as_a_query_parameter() {
        let shown = redact("postgres://keel@db/app?sslmode=require&password=s3cret");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("sslmode=require"), "{shown}");
    }

    #[test]
    fn hides_the_password_of_a_malformed_url() {
        let shown = redact("postgres://keel:s3 cr@et@db:notaport/app");
        assert!(!shown.contains("s3"), "{shown}");
        assert!(shown.starts_with("postgres://keel:***@"), "{shown}");
    }

    #[test]
    fn leaves_urls_without_secrets_alone() {
        assert_eq!(redact("sqlite:data/app.db"), "sqlite:data/app.db");
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:5432/keel"),
            "postgres://postgres@127.0.0.1:5432/keel"
        );
    }
}
