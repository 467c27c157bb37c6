use super::*;

fn parse(text: &str) -> Result<NamedLimits, ConfigError> {
    let blocks: BTreeMap<String, LimitBlock> = toml::from_str(text).expect("valid TOML");
    NamedLimits::resolve(blocks)
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

const EXAMPLE: &str = r#"
[t_rpm]
kind = "token_bucket"
rate = 60
per = "1m"
burst = 10
[t_rpm.overrides."acme"]
rate = 600
burst = 100

[t_daily]
kind = "quota"
amount = 1000
period = "1d"

[t_inflight]
kind = "concurrency"
max = 4
lease_ttl = "10m"
"#;

#[test]
fn the_example_resolves() {
    let named = parse(EXAMPLE).unwrap();
    let rt = RuntimeLimits::new();
    let rpm = named.find("t_rpm").unwrap();
    assert_eq!(
        named.policy_with_source("x", rpm, &rt),
        (
            Policy::TokenBucket {
                rate: 60,
                burst: 10,
                per_s: 60
            },
            PolicySource::Default
        )
    );
    assert_eq!(
        named.policy_with_source("acme", rpm, &rt),
        (
            Policy::TokenBucket {
                rate: 600,
                burst: 100,
                per_s: 60
            },
            PolicySource::Config
        )
    );
    let daily = named.find("t_daily").unwrap();
    assert_eq!(
        named.policy_with_source("x", daily, &rt).0,
        Policy::Quota {
            amount: 1000,
            period: Period::Fixed(86_400)
        }
    );
    let inflight = named.find("t_inflight").unwrap();
    assert_eq!(
        named.policy_with_source("x", inflight, &rt).0,
        Policy::Concurrency {
            max: 4,
            lease_ttl_s: 600
        }
    );
    // A runtime override wins; one of another kind is ignored.
    rt.replace([
        (("x".into(), daily), OverrideValue::Quota { amount: 5 }),
        (("x".into(), inflight), OverrideValue::Quota { amount: 5 }),
    ]);
    assert_eq!(
        named.policy_with_source("x", daily, &rt),
        (
            Policy::Quota {
                amount: 5,
                period: Period::Fixed(86_400)
            },
            PolicySource::Runtime
        )
    );
    assert_eq!(
        named.policy_with_source("x", inflight, &rt).1,
        PolicySource::Default
    );
}

#[test]
fn defaults_of_a_block() {
    let named = parse("[t_plain]\nrate = 5\n").unwrap();
    let l = named.find("t_plain").unwrap();
    let def = named.get(l).unwrap();
    assert_eq!(def.kind, LimitKind::TokenBucket);
    assert_eq!(def.per_s, 1);
    assert_eq!(def.value, OverrideValue::TokenBucket { rate: 5, burst: 5 });
    let named = parse("[t_c]\nkind = \"concurrency\"\nmax = 2\n").unwrap();
    let def = named.get(named.find("t_c").unwrap()).unwrap();
    assert_eq!(def.lease_ttl_s, DEFAULT_LEASE_TTL_S);
}

#[test]
fn errors_name_the_key() {
    let cases = [
        (
            "[t_d]\nkind = \"quota\"\namount = 5\nperiod = \"2w\"\n",
            "limits.t_d.period",
        ),
        ("[t_d]\nkind = \"quota\"\namount = 5\n", "limits.t_d.period"),
        (
            "[t_d]\nkind = \"quota\"\nperiod = \"1d\"\n",
            "limits.t_d.amount",
        ),
        (
            "[t_d]\nkind = \"quota\"\namount = 0\nperiod = \"1d\"\n",
            "limits.t_d.amount",
        ),
        (
            "[t_d]\nkind = \"quota\"\namount = 5\nperiod = \"1d\"\nrate = 3\n",
            "limits.t_d.rate",
        ),
        ("[t_d]\nkind = \"bogus\"\n", "limits.t_d.kind"),
        ("[t_r]\nrate = 5\nper = \"1y\"\n", "limits.t_r.per"),
        ("[t_r]\nrate = 5\nburst = 0\n", "limits.t_r.burst"),
        ("[t_r]\nburst = 5\n", "limits.t_r.rate"),
        (
            "[t_r]\nrate = 5\nper = \"1d\"\nburst = 1000000\n",
            "limits.t_r.burst",
        ),
        ("[t_c]\nkind = \"concurrency\"\nmax = 0\n", "limits.t_c.max"),
        (
            "[t_c]\nkind = \"concurrency\"\nmax = 1\nlease_ttl = \"30d\"\n",
            "limits.t_c.lease_ttl",
        ),
        ("[\"Bad Name\"]\nrate = 1\n", "limits.Bad Name.name"),
        ("[requests]\nrate = 1\n", "limits.requests"),
        (
            "[t_r]\nrate = 5\n[t_r.overrides.\"a b\"]\nrate = 1\n",
            "limits.t_r.overrides.\"a b\".key",
        ),
        (
            "[t_r]\nrate = 5\n[t_r.overrides.\"a\"]\namount = 1\n",
            "limits.t_r.overrides.\"a\".amount",
        ),
        (
            "[t_r]\nrate = 5\n[t_r.overrides.\"a\"]\nburst = 0\n",
            "limits.t_r.overrides.\"a\".burst",
        ),
    ];
    for (text, key) in cases {
        let e = err(text);
        assert!(e.contains(&format!("`{key}`")), "{text:?}: {e}");
    }
}

#[test]
fn unknown_fields_are_refused() {
    let blocks: Result<BTreeMap<String, LimitBlock>, _> = toml::from_str("[t_x]\nrte = 5\n");
    assert!(blocks.unwrap_err().to_string().contains("rte"));
}

#[test]
fn the_bound_on_long_periods_is_exact() {
    let per = 86_400u32;
    let most = (MAX_BURST_TIMES_PER_S / u64::from(per)) as u32;
    assert!(check_value(
        OverrideValue::TokenBucket {
            rate: 1,
            burst: most
        },
        per
    )
    .is_ok());
    assert!(check_value(
        OverrideValue::TokenBucket {
            rate: 1,
            burst: most + 1
        },
        per
    )
    .is_err());
    // The seed's token limit (per minute, burst up to 10^8) fits.
    assert!(check_value(
        OverrideValue::TokenBucket {
            rate: 1,
            burst: crate::MAX_TOKEN_BURST
        },
        60
    )
    .is_ok());
}
