//! Values with units and provider rules: durations, memory, CPU, hostnames, emails, git branch
//! names, cron schedules, and the name limits each provider applies.
//!
//! Pure functions returning a plain `Err(String)` reason; the semantic layer attaches the
//! position and code. Limits cite the provider rule they enforce, because a limit that is
//! stricter than the provider's annoys users and a looser one fails at apply time, which is
//! exactly what validation exists to prevent.

use croner::parser::{CronParser, Seconds, Year};

/// Seconds in a duration such as `30s`, `15m`, `24h`, `7d`, `2w`.
pub fn duration_seconds(text: &str) -> Result<u64, String> {
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit; add s, m, h, d or w"))?;
    let (digits, unit) = text.split_at(unit_at);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("unknown unit `{unit}`; use s, m, h, d or w")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// Human form of a number of seconds, for messages.
pub fn human_seconds(s: u64) -> String {
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Check a duration lies in `[min, max]` seconds.
pub fn duration_in(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let s = duration_seconds(text)?;
    if s < min || s > max {
        return Err(format!(
            "`{text}` is out of range: between {} and {}",
            human_seconds(min),
            human_seconds(max)
        ));
    }
    Ok(s)
}

/// Mebibytes in `512Mi` / `2Gi`.
pub fn memory_mib(text: &str) -> Result<u32, String> {
    let (n, mult) = if let Some(n) = text.strip_suffix("Gi") {
        (n, 1024)
    } else if let Some(n) = text.strip_suffix("Mi") {
        (n, 1)
    } else {
        return Err(format!("`{text}` needs a unit: Mi or Gi"));
    };
    let n: u32 = n.parse().map_err(|_| format!("`{text}` is not a size"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// vCPUs as written: `1`, `0.5`, `"2"`, `"500m"`.
pub fn cpu_value(cpu: &super::file::Cpu) -> Result<f64, String> {
    match cpu {
        super::file::Cpu::Number(n) => Ok(*n),
        super::file::Cpu::Text(t) => {
            if let Some(m) = t.strip_suffix('m') {
                m.parse::<u32>()
                    .map(|m| f64::from(m) / 1000.0)
                    .map_err(|_| format!("`{t}` is not a CPU amount"))
            } else {
                t.parse::<f64>()
                    .map_err(|_| format!("`{t}` is not a CPU amount"))
            }
        }
    }
}

/// Cloud Run's spelling of a CPU limit: whole vCPUs as "1", fractions as millicores.
pub fn cpu_text(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as u32)
    } else {
        format!("{}m", (v * 1000.0).round() as u32)
    }
}

/// Cloud Run (2nd generation) CPU and memory rules, from "Configure CPU limits" and
/// "Configure memory limits" in the Cloud Run documentation: CPU is 1, 2, 4, 6 or 8, or a
/// fraction from 0.08 below 1; memory is 512Mi to 32Gi; more than 4Gi needs at least 2 CPUs,
/// more than 8Gi at least 4, more than 16Gi at least 6, more than 24Gi 8; 4 CPUs need at
/// least 2Gi and 6 or 8 CPUs at least 4Gi; a fraction of a CPU allows at most 1Gi and
/// requires a concurrency of 1.
pub fn check_cloud_run_limits(cpu: f64, memory_mib: u32, concurrency: u32) -> Vec<String> {
    let mut problems = Vec::new();
    let whole = [1.0, 2.0, 4.0, 6.0, 8.0];
    if !(whole.contains(&cpu) || (0.08..1.0).contains(&cpu)) {
        problems.push(format!(
            "cpu {cpu} is not offered by Cloud Run: use 1, 2, 4, 6 or 8, or a fraction from 0.08 to below 1"
        ));
        return problems;
    }
    if !(512..=32 * 1024).contains(&memory_mib) {
        problems.push(format!(
            "memory {memory_mib}Mi is outside Cloud Run's range of 512Mi to 32Gi"
        ));
        return problems;
    }
    let needed_cpu = match memory_mib {
        m if m > 24 * 1024 => 8.0,
        m if m > 16 * 1024 => 6.0,
        m if m > 8 * 1024 => 4.0,
        m if m > 4 * 1024 => 2.0,
        _ => 0.0,
    };
    if cpu < needed_cpu {
        problems.push(format!(
            "{memory_mib}Mi of memory needs at least {needed_cpu} CPUs on Cloud Run"
        ));
    }
    let needed_mem = match cpu {
        c if c >= 6.0 => 4096,
        c if c >= 4.0 => 2048,
        _ => 0,
    };
    if memory_mib < needed_mem {
        problems.push(format!(
            "{cpu} CPUs need at least {}Gi of memory on Cloud Run",
            needed_mem / 1024
        ));
    }
    if cpu < 1.0 {
        if memory_mib > 1024 {
            problems.push("a fraction of a CPU allows at most 1Gi of memory on Cloud Run".into());
        }
        if concurrency != 1 {
            problems
                .push("a fraction of a CPU requires `scaling.concurrency: 1` on Cloud Run".into());
        }
    }
    problems
}

/// A DNS hostname: labels of 1 to 63 letters, digits and hyphens, not starting or ending with
/// a hyphen, 253 characters in all, lowercase (Cloudflare and Vercel store names lowercase; a
/// mixed-case name would show as drift forever).
pub fn hostname(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > 253 {
        return Err("a hostname is 1 to 253 characters".into());
    }
    if text.starts_with('*') {
        return Err("wildcard names are not supported; list each hostname".into());
    }
    if text.ends_with('.') {
        return Err("write the hostname without a trailing dot".into());
    }
    let labels: Vec<&str> = text.split('.').collect();
    if labels.len() < 2 {
        return Err(format!("`{text}` is not a fully qualified hostname"));
    }
    for label in labels {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "`{label}` is not a valid DNS label (1 to 63 characters)"
            ));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(if label.chars().any(|c| c.is_ascii_uppercase()) {
                format!("write `{}` in lowercase", text.to_ascii_lowercase())
            } else {
                format!("`{label}` has characters DNS does not allow (use punycode for IDNs)")
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("`{label}` starts or ends with a hyphen"));
        }
    }
    Ok(())
}

/// Is `host` the zone or under it?
pub fn under_zone(host: &str, zone: &str) -> bool {
    host == zone || host.strip_suffix(zone).is_some_and(|p| p.ends_with('.'))
}

/// An email address as Cloudflare Access matches it: local part and a hostname.
pub fn email(text: &str) -> Result<(), String> {
    let Some((local, domain)) = text.rsplit_once('@') else {
        return Err(format!("`{text}` is not an email address"));
    };
    if local.is_empty()
        || local.len() > 64
        || local.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("`{text}` is not an email address"));
    }
    hostname(&domain.to_ascii_lowercase()).map_err(|e| format!("`{text}`: {e}"))
}

/// A git branch name as `git check-ref-format --branch` accepts it.
pub fn branch(text: &str) -> Result<(), String> {
    let bad = text.is_empty()
        || text.starts_with('-')
        || text.starts_with('/')
        || text.ends_with('/')
        || text.ends_with('.')
        || text.ends_with(".lock")
        || text.contains("..")
        || text.contains("@{")
        || text.contains("//")
        || text == "@"
        || text
            .chars()
            .any(|c| c.is_ascii_control() || " ~^:?*[\\".contains(c))
        || text.split('/').any(|p| p.starts_with('.'));
    if bad {
        Err(format!("`{text}` is not a valid git branch name"))
    } else {
        Ok(())
    }
}

/// A relative path inside the repository.
pub fn repo_path(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("the path is empty".into());
    }
    if text.starts_with('/') || text.starts_with('\\') || text.contains(':') {
        return Err(format!("`{text}` must be relative to the repository"));
    }
    if text.split(['/', '\\']).any(|p| p == "..") {
        return Err(format!("`{text}` leaves the repository (`..`)"));
    }
    if text.chars().any(|c| c.is_control()) {
        return Err("the path has control characters".into());
    }
    Ok(())
}

/// A 5-field cron expression (minute hour day-of-month month day-of-week), UTC. Returns how
/// many times it fires in the busiest hour of a sample day, for the frequency warning.
pub fn cron(text: &str) -> Result<usize, String> {
    let fields = text.split_whitespace().count();
    let alias = text.trim_start().starts_with('@');
    if alias && text.trim() == "@reboot" {
        return Err("`@reboot` has no meaning for a drift schedule".into());
    }
    if !alias && fields != 5 {
        return Err(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
        ));
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    let c = parser.parse(text).map_err(|e| e.to_string())?;
    // A fixed instant keeps validation pure: the same file always gets the same verdict.
    let start = chrono::NaiveDate::from_ymd_opt(2026, 1, 5)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or("internal: bad sample date")?;
    let end = start + chrono::Duration::days(1);
    let mut per_hour = [0usize; 24];
    for t in c
        .iter_from(start, croner::Direction::Forward)
        .take(24 * 60 + 1)
        .take_while(|t| *t < end)
    {
        per_hour[((t - start).num_hours() as usize).min(23)] += 1;
    }
    Ok(per_hour.into_iter().max().unwrap_or(0))
}

/// A provider's rule for names Telbase creates.
pub struct NameRule {
    pub what: &'static str,
    pub max: usize,
}

/// Vercel: project names are at most 100 characters of lowercase letters, digits, `.`, `_`
/// and `-`, without `---` (Vercel's project-name validation).
pub const VERCEL_PROJECT: NameRule = NameRule {
    what: "Vercel project name",
    max: 100,
};
/// Cloud Run Admin API v2, `services.create` `serviceId`: begins with a letter, does not end
/// with a hyphen, fewer than 50 characters.
pub const CLOUD_RUN_SERVICE: NameRule = NameRule {
    what: "Cloud Run service name",
    max: 49,
};
/// Cloud SQL: `project-id:instance-id` is at most 98 characters; Google project IDs are at
/// most 30, which leaves 67 for the instance.
pub const CLOUD_SQL_INSTANCE: NameRule = NameRule {
    what: "Cloud SQL instance name",
    max: 67,
};
/// Turso database names: lowercase letters, digits and dashes, at most 64 characters.
pub const TURSO_DATABASE: NameRule = NameRule {
    what: "Turso database name",
    max: 64,
};
/// Neon project names: at most 256 characters (Neon API `ProjectCreateRequest.name`).
pub const NEON_PROJECT: NameRule = NameRule {
    what: "Neon project name",
    max: 256,
};
/// PostgreSQL identifiers (database and role names) are at most 63 bytes (NAMEDATALEN - 1).
pub const POSTGRES_IDENTIFIER: NameRule = NameRule {
    what: "Postgres database/role name",
    max: 63,
};
/// One DNS label, for preview hostnames `<app>-pr-<n>.<zone>`.
pub const DNS_LABEL: NameRule = NameRule {
    what: "preview hostname label",
    max: 63,
};

/// The longest preview suffix Telbase appends: `-pr-` and a pull request number of up to 7
/// digits (GitHub numbers issues and PRs together; the largest repositories are past 200,000).
pub const PREVIEW_SUFFIX_MAX: usize = "-pr-".len() + 7;

pub fn check_name(rule: &NameRule, name: &str, with_preview_suffix: bool) -> Result<(), String> {
    let len = name.len()
        + if with_preview_suffix {
            PREVIEW_SUFFIX_MAX
        } else {
            0
        };
    if len > rule.max {
        return Err(format!(
            "{} `{name}{}` would be {len} characters; the limit is {}",
            rule.what,
            if with_preview_suffix {
                "-pr-NNNNNNN"
            } else {
                ""
            },
            rule.max
        ));
    }
    if name.contains("---") {
        return Err(format!("{} `{name}` may not contain `---`", rule.what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_seconds("7d"), Ok(604_800));
        assert_eq!(duration_seconds("90s"), Ok(90));
        assert!(duration_seconds("7").is_err());
        assert!(duration_seconds("7y").is_err());
        assert!(duration_in("2m", 3600, 86400).is_err());
    }

    #[test]
    fn cloud_run_limits() {
        assert!(check_cloud_run_limits(1.0, 512, 80).is_empty());
        assert!(!check_cloud_run_limits(1.0, 8192, 80).is_empty());
        assert!(!check_cloud_run_limits(0.5, 512, 80).is_empty());
        assert!(check_cloud_run_limits(0.5, 512, 1).is_empty());
        assert!(!check_cloud_run_limits(3.0, 2048, 80).is_empty());
        assert!(check_cloud_run_limits(4.0, 16384, 80).is_empty());
    }

    #[test]
    fn hostnames_and_zones() {
        assert!(hostname("shop.acme.com").is_ok());
        assert!(hostname("Shop.acme.com").is_err());
        assert!(hostname("acme").is_err());
        assert!(hostname("-a.acme.com").is_err());
        assert!(under_zone("shop.acme.com", "acme.com"));
        assert!(under_zone("acme.com", "acme.com"));
        assert!(!under_zone("evilacme.com", "acme.com"));
    }

    #[test]
    fn cron_counts_fires_per_hour() {
        assert_eq!(cron("*/15 * * * *"), Ok(4));
        assert_eq!(cron("* * * * *"), Ok(60));
        assert!(cron("0 */2 * * * *").is_err());
        assert!(cron("61 * * * *").is_err());
        assert!(cron("@reboot").is_err());
    }

    #[test]
    fn branches() {
        assert!(branch("main").is_ok());
        assert!(branch("release/2026").is_ok());
        assert!(branch("a..b").is_err());
        assert!(branch("-x").is_err());
    }
}
