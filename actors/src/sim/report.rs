//! The simulation's figures as Markdown tables, one column per cluster size
//! (what `bench sim` prints and docs/simulation.md quotes), and the model
//! of the Redis write rate at a deployment's rate.

use std::fmt::Write;

use crate::sim::convergence::Converged;
use crate::sim::workload::LoadFigures;
use crate::sim::zipf::Zipf;
use crate::sim::SimFigures;

/// Buckets written to Redis per second at `rate` checks per second: every
/// bucket a snapshot interval touched is written once at its end.
pub fn redis_writes_per_s(zipf: &Zipf, rate: f64, interval_s: f64) -> f64 {
    zipf.expected_distinct(rate * interval_s) / interval_s
}

fn conv(c: &Converged) -> String {
    if c.done {
        format!("{:.0} ms ({:.1} rounds)", c.ms, c.rounds)
    } else {
        format!("not within {:.0} ms", c.ms)
    }
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

fn load_rows(
    rows: &mut Vec<(String, Vec<String>)>,
    label: &str,
    hot: usize,
    figs: &[&LoadFigures],
) {
    let hot = format!("hot tenants 1-{hot}: forwarded share");
    let names = [
        "checks (achieved rate /s)",
        "decided where it arrived / forwarded / leased / degraded",
        "errors (first)",
        hot.as_str(),
        "node-to-node calls per check",
        "node-to-node bytes per check",
        "owner CPU share (busiest node's decisions)",
    ];
    let cells: Vec<[String; 7]> = figs.iter().map(|l| load_cells(l)).collect();
    for (i, name) in names.iter().enumerate() {
        rows.push((
            format!("{name}, leases {label}"),
            cells.iter().map(|c| c[i].clone()).collect(),
        ));
    }
}

fn load_cells(l: &LoadFigures) -> [String; 7] {
    [
        format!("{} ({:.0})", l.checks, l.achieved_rate),
        format!(
            "{} / {} / {} / {}",
            pct(l.share(l.local)),
            pct(l.share(l.forwarded)),
            pct(l.share(l.leased)),
            pct(l.share(l.degraded))
        ),
        format!(
            "{} ({})",
            l.errors,
            l.first_error.as_deref().unwrap_or("none")
        ),
        pct(l.hot_forwarded_share()),
        format!("{:.3}", l.calls_per_check()),
        format!("{:.1} B", l.bytes_per_check()),
        pct(l.busiest_share),
    ]
}

/// The figures of each size as one Markdown table; `deployment_rate` is
/// the checks per second the Redis write model is evaluated at.
pub fn markdown(figs: &[SimFigures], deployment_rate: f64) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&SimFigures) -> String| {
        rows.push((name.to_string(), figs.iter().map(f).collect()));
    };
    row("1/N", &|f| pct(1.0 / f.settings.nodes as f64));
    row(
        "busiest node's share of keys",
        &|f| pct(f.busiest_key_share),
    );
    row("keys moved by a join (ideal)", &|f| {
        format!("{} ({})", pct(f.join.ring.share), pct(f.join.ring.ideal))
    });
    row("keys moved by a leave (ideal)", &|f| {
        format!("{} ({})", pct(f.leave.ring.share), pct(f.leave.ring.ideal))
    });
    row("convergence: bootstrap", &|f| conv(&f.gossip.bootstrap));
    row("convergence: join (start to agreed)", &|f| {
        conv(&f.gossip.join)
    });
    row("convergence: leave", &|f| conv(&f.gossip.leave));
    row("convergence: crash (detection + agreement)", &|f| {
        conv(&f.gossip.crash)
    });
    row("gossip sent per node, at rest", &|f| {
        format!(
            "{}/s, {:.0} datagrams/s",
            kib(f.gossip.bytes_per_node_s),
            f.gossip.messages_per_node_s
        )
    });
    row("gossip sent by the busiest node", &|f| {
        format!("{}/s", kib(f.gossip.max_bytes_per_node_s))
    });
    for (name, pick) in [
        (
            "join",
            (|f: &SimFigures| &f.join) as fn(&SimFigures) -> &crate::sim::Change,
        ),
        ("leave", |f| &f.leave),
        ("crash", |f| &f.crash),
    ] {
        row(&format!("handoff after a {name}: pulls (bytes)"), &|f| {
            let c = pick(f);
            format!("{} ({})", c.after.pulls.0, c.after.pulls.1)
        });
        row(&format!("handoff after a {name}: pushes (bytes)"), &|f| {
            let c = pick(f);
            format!("{} ({})", c.after.pushes.0, c.after.pushes.1)
        });
        row(&format!("buckets resident before the {name}"), &|f| {
            pick(f).resident.to_string()
        });
    }
    row("Redis writes/s in the run (leases off)", &|f| {
        format!("{:.0}", f.off.snapshot_writes_per_s)
    });
    row("Redis writes/s, model at the run's rate", &|f| {
        let zipf = Zipf::new(f.settings.tenants, f.settings.zipf_exponent);
        let s = f.settings.snapshot_interval.as_secs_f64();
        format!("{:.0}", redis_writes_per_s(&zipf, f.off.achieved_rate, s))
    });
    row(
        &format!("Redis writes/s, model at {deployment_rate:.0} checks/s"),
        &|f| {
            let zipf = Zipf::new(f.settings.tenants, f.settings.zipf_exponent);
            let s = f.settings.snapshot_interval.as_secs_f64();
            format!("{:.0}", redis_writes_per_s(&zipf, deployment_rate, s))
        },
    );
    row("tenant 0: admitted + left = burst (leases on)", &|f| {
        let e = &f.exactness;
        format!(
            "{} + {} = {} ({})",
            e.admitted,
            e.level_after_returns,
            e.burst,
            if e.holds() { "exact" } else { "NOT exact" }
        )
    });
    row(
        "lease threshold: forwards/s of one bucket (share of a node's checks)",
        &|f| {
            let s = &f.settings;
            let share = f64::from(s.leases.threshold) * s.nodes as f64 / f.on.achieved_rate;
            format!("{} ({})", s.leases.threshold, pct(share))
        },
    );
    let off: Vec<&LoadFigures> = figs.iter().map(|f| &f.off).collect();
    let on: Vec<&LoadFigures> = figs.iter().map(|f| &f.on).collect();
    let hot = figs.first().map_or(0, |f| f.settings.load.hot);
    load_rows(&mut rows, "off", hot, &off);
    load_rows(&mut rows, "on", hot, &on);

    let mut out = String::from("| figure |");
    for f in figs {
        let _ = write!(out, " {} nodes |", f.settings.nodes);
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(figs.len()));
    out.push('\n');
    for (name, cells) in rows {
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    }
    out
}
