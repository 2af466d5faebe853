//! The paths requested: one path, or a weighted mix (`95:/a,5:/b`) from which each request picks
//! one at random, in proportion to the weights.

use hyper::{Uri, http::uri::PathAndQuery};
use serde::{Serialize, Serializer, ser::SerializeSeq as _};

use crate::config::ConfigError;

/// Paths with their weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMix {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    weight: u32,
    uri: Uri,
    /// The sum of this entry's weight and all weights before it.
    cumulative: u64,
}

impl PathMix {
    /// Every request asks for `path`.
    #[must_use]
    pub fn single_uri(path: &PathAndQuery) -> Self {
        Self::from_weighted(vec![(1, path.clone())])
    }

    /// Every request asks for `path`, which must start with `/`.
    ///
    /// # Errors
    ///
    /// A path that does not start with `/` or is not valid in a request line.
    pub fn single(path: &str) -> Result<Self, ConfigError> {
        Ok(Self::single_uri(&parse_path(path)?))
    }

    /// Parses `WEIGHT:PATH,WEIGHT:PATH,…` (weights are positive whole numbers).
    ///
    /// # Errors
    ///
    /// An entry that is not `WEIGHT:PATH`, a weight that is not a positive whole number, or a
    /// bad path.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::BadMix {
            spec: spec.to_owned(),
            reason,
        };
        let mut weighted = Vec::new();
        for item in spec.split(',') {
            let (weight, path) = item
                .split_once(':')
                .ok_or_else(|| bad(format!("{item:?} is not WEIGHT:PATH")))?;
            let weight = weight
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|w| *w > 0)
                .ok_or_else(|| bad(format!("weight {weight:?} is not a positive whole number")))?;
            let path = parse_path(path.trim()).map_err(|err| bad(err.to_string()))?;
            weighted.push((weight, path));
        }
        Ok(Self::from_weighted(weighted))
    }

    fn from_weighted(weighted: Vec<(u32, PathAndQuery)>) -> Self {
        let mut cumulative = 0;
        let entries = weighted
            .into_iter()
            .map(|(weight, path)| {
                cumulative += u64::from(weight);
                Entry {
                    weight,
                    uri: Uri::from(path),
                    cumulative,
                }
            })
            .collect();
        Self { entries }
    }

    /// The paths and their weights, in the order given.
    pub fn entries(&self) -> impl Iterator<Item = (u32, &str)> {
        self.entries
            .iter()
            .map(|e| (e.weight, e.uri.path_and_query().map_or("/", |p| p.as_str())))
    }

    /// Picks a path at random, in proportion to the weights.
    pub(crate) fn pick(&self, rng: &mut fastrand::Rng) -> &Uri {
        self.at(rng.u64(0..self.total()))
    }

    fn total(&self) -> u64 {
        self.entries.last().map_or(1, |e| e.cumulative)
    }

    /// The path whose share of `0..total` holds `point`.
    fn at(&self, point: u64) -> &Uri {
        let index = self.entries.partition_point(|e| e.cumulative <= point);
        &self.entries[index.min(self.entries.len() - 1)].uri
    }
}

fn parse_path(path: &str) -> Result<PathAndQuery, ConfigError> {
    path.parse::<PathAndQuery>()
        .ok()
        .filter(|p| path.starts_with('/') && p.as_str() == path)
        .ok_or_else(|| ConfigError::BadPath(path.to_owned()))
}

/// As a list of `{"weight": W, "path": P}`.
impl Serialize for PathMix {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Weighted<'a> {
            weight: u32,
            path: &'a str,
        }
        let mut seq = serializer.serialize_seq(Some(self.entries.len()))?;
        for (weight, path) in self.entries() {
            seq.serialize_element(&Weighted { weight, path })?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(mix: &PathMix) -> Vec<(u32, String)> {
        mix.entries().map(|(w, p)| (w, p.to_owned())).collect()
    }

    #[test]
    fn parses_weighted_paths() {
        let mix =
            PathMix::parse("95:/work?iterations=100000, 5:/work?iterations=50000000").unwrap();
        assert_eq!(
            paths(&mix),
            [
                (95, "/work?iterations=100000".to_owned()),
                (5, "/work?iterations=50000000".to_owned())
            ]
        );
        // A colon inside the path stays in the path.
        let colon = PathMix::parse("1:/a:b").unwrap();
        assert_eq!(paths(&colon), [(1, "/a:b".to_owned())]);
    }

    #[test]
    fn picks_in_proportion_to_the_weights() {
        let mix = PathMix::parse("3:/a,1:/b,2:/c").unwrap();
        let picked: Vec<&str> = (0..6).map(|point| mix.at(point).path()).collect();
        assert_eq!(picked, ["/a", "/a", "/a", "/b", "/c", "/c"]);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..100 {
            assert!(["/a", "/b", "/c"].contains(&mix.pick(&mut rng).path()));
        }
    }

    #[test]
    fn rejects_bad_mixes() {
        for bad in [
            "",
            "/a",
            "x:/a",
            "0:/a",
            "-1:/a",
            "1:/a,",
            "1:a",
            "1:/a b",
            "99999999999:/a",
        ] {
            let err = PathMix::parse(bad).unwrap_err();
            assert!(matches!(err, ConfigError::BadMix { .. }), "{bad}: {err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    #[test]
    fn a_single_path_must_start_with_a_slash() {
        assert!(PathMix::single("/work?iterations=1").is_ok());
        for bad in ["work", "", "http://x/", "/a b"] {
            assert!(
                matches!(PathMix::single(bad), Err(ConfigError::BadPath(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn serializes_as_a_list() {
        let mix = PathMix::parse("2:/a,1:/b").unwrap();
        assert_eq!(
            serde_json::to_string(&mix).unwrap(),
            r#"[{"weight":2,"path":"/a"},{"weight":1,"path":"/b"}]"#
        );
    }
}
