//! The simulation's randomness: a seeded generator ([`SimRng`], splitmix64:
//! the same seed gives the same run) and the Zipf tenant distribution
//! ([`Zipf`]) the workload draws tenants from, with the analytic figures
//! derived from it (a tenant's share, distinct tenants seen in an interval).

/// A small seeded generator (splitmix64).
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
}

/// Zipf over tenants `0..n`: tenant `k` (rank `k + 1`) is drawn with
/// probability proportional to `1 / (k + 1)^s`.
#[derive(Debug, Clone)]
pub struct Zipf {
    /// Cumulative probabilities, rising to 1.
    cdf: Vec<f64>,
    pub exponent: f64,
}

impl Zipf {
    pub fn new(tenants: usize, exponent: f64) -> Self {
        let weights: Vec<f64> = (1..=tenants.max(1))
            .map(|k| (k as f64).powf(-exponent))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Zipf { cdf, exponent }
    }

    pub fn tenants(&self) -> usize {
        self.cdf.len()
    }

    /// A tenant index, by inverting the cumulative distribution.
    pub fn sample(&self, rng: &mut SimRng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }

    /// The probability of tenant `k`.
    pub fn share(&self, k: usize) -> f64 {
        let below = if k == 0 { 0.0 } else { self.cdf[k - 1] };
        self.cdf[k] - below
    }

    /// Expected distinct tenants among `draws` independent draws (the
    /// buckets a snapshot interval makes dirty at that many checks).
    pub fn expected_distinct(&self, draws: f64) -> f64 {
        (0..self.tenants())
            .map(|k| 1.0 - (1.0 - self.share(k)).powf(draws))
            .sum()
    }
}

/// The simulated tenant id of index `k`.
pub fn tenant(k: usize) -> String {
    format!("tenant-{k}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_the_shares() {
        let z = Zipf::new(1_000, 1.1);
        let mut rng = SimRng::new(7);
        let mut counts = vec![0u32; 1_000];
        let n = 200_000;
        for _ in 0..n {
            counts[z.sample(&mut rng)] += 1;
        }
        for k in [0, 1, 9] {
            let seen = f64::from(counts[k]) / f64::from(n);
            let want = z.share(k);
            assert!(
                (seen - want).abs() < want * 0.05,
                "tenant {k}: {seen} vs {want}"
            );
        }
        assert!(z.share(0) > z.share(1) && z.share(1) > z.share(999));
    }

    #[test]
    fn distinct_tenants_are_bounded_by_draws_and_tenants() {
        let z = Zipf::new(1_000, 1.0);
        assert!((z.expected_distinct(1.0) - 1.0).abs() < 1e-9);
        let many = z.expected_distinct(1e9);
        assert!((many - 1_000.0).abs() < 1e-6, "{many}");
        assert!(z.expected_distinct(100.0) < 100.0);
    }
}
