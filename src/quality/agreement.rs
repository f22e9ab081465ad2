//! Cross-arm agreement: how far two arms' greedy answers to the same prompts agree, and whether
//! one arm gets items right that the other gets wrong more often than chance allows.
//!
//! [`agreement`] is a pure function over two arms' per-item records (the quality journals), so
//! `kvbench compare` can call it on saved runs. Arm A is the reference (baseline).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::stats::mcnemar_exact;
use super::ItemRecord;
use crate::client::chunk::TokenLogprob;
use crate::stats::Summary;

/// One item whose grade differs between the arms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Flip {
    /// Item id.
    pub id: String,
    /// `true`: right in A, wrong in B (a loss); `false`: wrong in A, right in B (a gain).
    pub lost: bool,
}

/// Paired comparison of one suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuitePairing {
    /// Items answered in both arms with the same prompt.
    pub paired: u64,
    /// Correct in A (of `paired`).
    pub correct_a: u64,
    /// Correct in B (of `paired`).
    pub correct_b: u64,
    /// Right in A, wrong in B.
    pub lost: u64,
    /// Wrong in A, right in B.
    pub gained: u64,
    /// Two-sided exact McNemar p-value on the flips (1 without flips).
    pub mcnemar_p: f64,
    /// Identical answer text in both arms.
    pub exact_match: u64,
    /// The flipped items.
    pub flips: Vec<Flip>,
}

/// Where and how one pair of answers first differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    /// Suite.
    pub suite: String,
    /// Item id.
    pub id: String,
    /// Index of the first differing character (Unicode scalar) of the answers.
    pub first_char: u64,
    /// Index of the first differing token, when both arms returned per-token log-probabilities.
    pub first_token: Option<u64>,
}

/// Agreement between two arms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Items answered in both arms with the same prompt.
    pub paired: u64,
    /// Items present in both journals whose prompts differ (settings differed): not compared.
    pub prompt_mismatch: u64,
    /// Items answered in A only (missing or failed in B).
    pub only_a: u64,
    /// Items answered in B only.
    pub only_b: u64,
    /// Paired items with identical answer text.
    pub exact_match: u64,
    /// `exact_match / paired`; `null` without pairs.
    pub exact_match_rate: Option<f64>,
    /// First differing character, over the pairs that differ.
    pub first_divergence_char: Summary,
    /// First differing token, over the differing pairs with log-probabilities on both sides.
    pub first_divergence_token: Summary,
    /// Paired items with log-probabilities on both sides.
    pub logprob_items: u64,
    /// Token positions compared: every position of the common prefix, and the first differing
    /// one (later positions follow different contexts).
    pub positions_compared: u64,
    /// Share of compared positions whose most likely token is the same in both arms; `null`
    /// without log-probabilities.
    pub top1_agreement: Option<f64>,
    /// Mean KL(A‖B) in nats over compared positions, on the returned top-k (see docs).
    pub mean_kl: Option<f64>,
    /// Largest per-position KL(A‖B).
    pub max_kl: Option<f64>,
    /// Degenerate (loop or gibberish) answers among paired items, in A.
    pub degenerate_a: u64,
    /// Degenerate answers among paired items, in B.
    pub degenerate_b: u64,
    /// Paired items whose finish reason changed, by `"A->B"` (e.g. `"stop->length"`).
    pub finish_reason_shifts: BTreeMap<String, u64>,
    /// Per-suite paired grades, McNemar test and flips.
    pub suites: BTreeMap<String, SuitePairing>,
    /// Every differing pair, in suite and id order.
    pub divergences: Vec<Divergence>,
}

/// Compares two arms' per-item records (A = reference). Items are matched by suite and id;
/// only items answered in both arms with the same prompt hash are compared.
pub fn agreement(a: &[ItemRecord], b: &[ItemRecord]) -> Agreement {
    let b_by_key: HashMap<(&str, &str), &ItemRecord> = b
        .iter()
        .map(|r| ((r.suite.as_str(), r.id.as_str()), r))
        .collect();
    let mut pairs: Vec<(&ItemRecord, &ItemRecord)> = Vec::new();
    let mut prompt_mismatch = 0;
    let mut only_a = 0;
    for ra in a {
        match b_by_key.get(&(ra.suite.as_str(), ra.id.as_str())) {
            Some(rb) if ra.prompt_hash != rb.prompt_hash => prompt_mismatch += 1,
            Some(rb) if ra.answered() && rb.answered() => pairs.push((ra, rb)),
            // Answered in B only: counted from B's side below.
            _ if ra.answered() => only_a += 1,
            _ => {}
        }
    }
    let a_keys: HashMap<(&str, &str), &ItemRecord> = a
        .iter()
        .map(|r| ((r.suite.as_str(), r.id.as_str()), r))
        .collect();
    let only_b = b
        .iter()
        .filter(|rb| rb.answered())
        .filter(
            |rb| match a_keys.get(&(rb.suite.as_str(), rb.id.as_str())) {
                Some(ra) => ra.prompt_hash == rb.prompt_hash && !ra.answered(),
                None => true,
            },
        )
        .count() as u64;
    pairs.sort_by(|x, y| (&x.0.suite, &x.0.id).cmp(&(&y.0.suite, &y.0.id)));

    let mut exact_match = 0;
    let mut div_chars = Vec::new();
    let mut div_tokens = Vec::new();
    let mut divergences = Vec::new();
    let mut logprob_items = 0;
    let mut positions = 0u64;
    let mut top1_same = 0u64;
    let mut kls = Vec::new();
    let mut degenerate_a = 0;
    let mut degenerate_b = 0;
    let mut shifts: BTreeMap<String, u64> = BTreeMap::new();
    let mut suites: BTreeMap<String, SuitePairing> = BTreeMap::new();

    for (ra, rb) in &pairs {
        let ans_a = ra.answer.as_deref().unwrap_or("");
        let ans_b = rb.answer.as_deref().unwrap_or("");
        let same = ans_a == ans_b;
        let s = suites
            .entry(ra.suite.clone())
            .or_insert_with(|| SuitePairing {
                paired: 0,
                correct_a: 0,
                correct_b: 0,
                lost: 0,
                gained: 0,
                mcnemar_p: 1.0,
                exact_match: 0,
                flips: Vec::new(),
            });
        s.paired += 1;
        s.correct_a += ra.correct as u64;
        s.correct_b += rb.correct as u64;
        if ra.correct != rb.correct {
            if ra.correct {
                s.lost += 1;
            } else {
                s.gained += 1;
            }
            s.flips.push(Flip {
                id: ra.id.clone(),
                lost: ra.correct,
            });
        }
        if same {
            exact_match += 1;
            s.exact_match += 1;
        }
        degenerate_a += ra.degenerate.is_some() as u64;
        degenerate_b += rb.degenerate.is_some() as u64;
        if ra.finish_reason != rb.finish_reason {
            let name = |r: &Option<String>| r.clone().unwrap_or_else(|| "none".into());
            *shifts
                .entry(format!(
                    "{}->{}",
                    name(&ra.finish_reason),
                    name(&rb.finish_reason)
                ))
                .or_default() += 1;
        }
        let token_cmp = match (&ra.logprobs, &rb.logprobs) {
            (Some(la), Some(lb)) if !la.is_empty() || !lb.is_empty() => {
                logprob_items += 1;
                Some(compare_tokens(la, lb))
            }
            _ => None,
        };
        if let Some(t) = &token_cmp {
            positions += t.positions;
            top1_same += t.top1_same;
            kls.extend_from_slice(&t.kl);
        }
        if !same {
            let first_char = ans_a
                .chars()
                .zip(ans_b.chars())
                .take_while(|(x, y)| x == y)
                .count() as u64;
            div_chars.push(first_char as f64);
            let first_token = token_cmp.as_ref().and_then(|t| t.first_divergence);
            if let Some(ft) = first_token {
                div_tokens.push(ft as f64);
            }
            divergences.push(Divergence {
                suite: ra.suite.clone(),
                id: ra.id.clone(),
                first_char,
                first_token,
            });
        }
    }
    for s in suites.values_mut() {
        s.mcnemar_p = mcnemar_exact(s.lost, s.gained);
    }
    let paired = pairs.len() as u64;
    Agreement {
        paired,
        prompt_mismatch,
        only_a,
        only_b,
        exact_match,
        exact_match_rate: (paired > 0).then(|| exact_match as f64 / paired as f64),
        first_divergence_char: Summary::of(&div_chars),
        first_divergence_token: Summary::of(&div_tokens),
        logprob_items,
        positions_compared: positions,
        top1_agreement: (positions > 0).then(|| top1_same as f64 / positions as f64),
        mean_kl: (!kls.is_empty()).then(|| kls.iter().sum::<f64>() / kls.len() as f64),
        max_kl: kls.iter().copied().reduce(f64::max),
        degenerate_a,
        degenerate_b,
        finish_reason_shifts: shifts,
        suites,
        divergences,
    }
}

struct TokenComparison {
    positions: u64,
    top1_same: u64,
    kl: Vec<f64>,
    first_divergence: Option<u64>,
}

/// Walks both token sequences while they agree. Each position of the common prefix is
/// compared, and so is the first position where the produced tokens differ (both arms saw the
/// same context there); after it the contexts differ and comparisons would mean nothing.
fn compare_tokens(a: &[TokenLogprob], b: &[TokenLogprob]) -> TokenComparison {
    let mut out = TokenComparison {
        positions: 0,
        top1_same: 0,
        kl: Vec::new(),
        first_divergence: None,
    };
    for (i, (ta, tb)) in a.iter().zip(b).enumerate() {
        out.positions += 1;
        if top1(ta) == top1(tb) {
            out.top1_same += 1;
        }
        if let Some(kl) = kl_topk(ta, tb) {
            out.kl.push(kl);
        }
        if ta.token != tb.token {
            out.first_divergence = Some(i as u64);
            return out;
        }
    }
    if a.len() != b.len() {
        // One arm stopped where the other went on.
        out.first_divergence = Some(a.len().min(b.len()) as u64);
    }
    out
}

/// The most likely token at a position: the best of the returned alternatives, or the produced
/// token when none were returned.
fn top1(t: &TokenLogprob) -> &str {
    t.top
        .iter()
        .max_by(|x, y| x.logprob.total_cmp(&y.logprob))
        .map(|x| x.token.as_str())
        .unwrap_or(t.token.as_str())
}

/// The distribution a position's returned alternatives describe, as token → probability:
/// the top-k plus the produced token.
fn dist(t: &TokenLogprob) -> Vec<(&str, f64)> {
    let mut d: Vec<(&str, f64)> = t
        .top
        .iter()
        .map(|x| (x.token.as_str(), x.logprob.exp()))
        .collect();
    if !d.iter().any(|(k, _)| *k == t.token) {
        d.push((t.token.as_str(), t.logprob.exp()));
    }
    d
}

/// KL(A‖B) in nats over the union of both arms' returned tokens at one position. A token that
/// an arm did not return gets, in that arm, the smaller of its smallest returned probability
/// and its unreturned mass (1 − Σ returned): it cannot be more likely than either. Both sides
/// are then renormalised over the union. `None` when an arm returned nothing usable.
fn kl_topk(a: &TokenLogprob, b: &TokenLogprob) -> Option<f64> {
    let da = dist(a);
    let db = dist(b);
    let mut union: Vec<&str> = da.iter().map(|(k, _)| *k).collect();
    for (k, _) in &db {
        if !union.contains(k) {
            union.push(k);
        }
    }
    let fill = |d: &[(&str, f64)]| {
        let min = d.iter().map(|(_, p)| *p).fold(f64::INFINITY, f64::min);
        let rest = (1.0 - d.iter().map(|(_, p)| *p).sum::<f64>()).max(0.0);
        // A floor keeps log ratios finite when the returned mass is (numerically) all of it.
        min.min(rest).max(1e-10)
    };
    let (fa, fb) = (fill(&da), fill(&db));
    let look = |d: &[(&str, f64)], k: &str, f: f64| {
        d.iter()
            .find(|(t, _)| *t == k)
            .map(|(_, p)| *p)
            .unwrap_or(f)
    };
    let pa: Vec<f64> = union.iter().map(|k| look(&da, k, fa)).collect();
    let pb: Vec<f64> = union.iter().map(|k| look(&db, k, fb)).collect();
    let (sa, sb): (f64, f64) = (pa.iter().sum(), pb.iter().sum());
    if !(sa > 0.0 && sb > 0.0 && sa.is_finite() && sb.is_finite()) {
        return None;
    }
    let kl = pa
        .iter()
        .zip(&pb)
        .map(|(x, y)| {
            let (x, y) = (x / sa, y / sb);
            if x > 0.0 {
                x * (x / y).ln()
            } else {
                0.0
            }
        })
        .sum::<f64>();
    Some(kl.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::chunk::TopLogprob;

    fn tok(token: &str, alts: &[(&str, f64)]) -> TokenLogprob {
        let top: Vec<TopLogprob> = alts
            .iter()
            .map(|(t, p)| TopLogprob {
                token: (*t).into(),
                logprob: p.ln(),
            })
            .collect();
        let logprob = alts
            .iter()
            .find(|(t, _)| *t == token)
            .map(|(_, p)| p.ln())
            .unwrap_or(-20.0);
        TokenLogprob {
            token: token.into(),
            logprob,
            top,
        }
    }

    fn rec(suite: &str, id: &str, answer: &str, correct: bool) -> ItemRecord {
        ItemRecord {
            suite: suite.into(),
            id: id.into(),
            prompt_hash: format!("h-{suite}-{id}"),
            answer: Some(answer.into()),
            correct,
            finish_reason: Some("stop".into()),
            ..ItemRecord::default()
        }
    }

    #[test]
    fn identical_arms_agree_fully() {
        let a = vec![
            rec("copy", "1", "abc", true),
            rec("copy", "2", "xyz", false),
        ];
        let g = agreement(&a, &a);
        assert_eq!(g.paired, 2);
        assert_eq!(g.exact_match_rate, Some(1.0));
        assert!(g.divergences.is_empty());
        assert_eq!(g.first_divergence_char.count, 0);
        assert_eq!(g.suites["copy"].mcnemar_p, 1.0);
        assert!(g.suites["copy"].flips.is_empty());
        assert_eq!(g.top1_agreement, None, "no logprobs, no token statistics");
    }

    #[test]
    fn hand_made_flips_divergences_and_shifts() {
        let a = vec![
            rec("arithmetic", "0", "The answer is 42", true),
            rec("arithmetic", "1", "17", true),
            rec("arithmetic", "2", "9", false),
            rec("passkey", "1024-d0-0", "12345", true),
            rec("passkey", "1024-d1-0", "12345", true),
            ItemRecord {
                error: Some("http_500: boom".into()),
                answer: None,
                ..rec("copy", "8-0", "", false)
            },
        ];
        let mut b = vec![
            rec("arithmetic", "0", "The answer is 41", false),
            rec("arithmetic", "1", "17", true),
            rec("arithmetic", "2", "10", true),
            rec("passkey", "1024-d0-0", "12345", true),
            ItemRecord {
                finish_reason: Some("length".into()),
                degenerate: Some("loop".into()),
                ..rec("passkey", "1024-d1-0", "1 1 1 1 1", false)
            },
            rec("copy", "8-0", "abcdefgh", true),
        ];
        b.push(ItemRecord {
            prompt_hash: "other".into(),
            ..rec("copy", "16-1", "x", true)
        });
        let mut a2 = a.clone();
        a2.push(rec("copy", "16-1", "x", true));
        let g = agreement(&a2, &b);
        assert_eq!(g.paired, 5);
        assert_eq!(g.prompt_mismatch, 1);
        assert_eq!(g.only_a, 0);
        assert_eq!(g.only_b, 1, "copy 8-0 failed in A");
        assert_eq!(g.exact_match, 2);
        assert_eq!(g.exact_match_rate, Some(0.4));
        // "The answer is 42" vs "... 41": first difference at character 15; "9" vs "10": 0;
        // "12345" vs "1 1 1 1 1": 1.
        let firsts: Vec<u64> = g.divergences.iter().map(|d| d.first_char).collect();
        assert_eq!(firsts, vec![15, 0, 1]);
        assert_eq!(g.first_divergence_char.max, Some(15.0));
        let ar = &g.suites["arithmetic"];
        assert_eq!((ar.paired, ar.correct_a, ar.correct_b), (3, 2, 2));
        assert_eq!((ar.lost, ar.gained), (1, 1));
        assert_eq!(ar.mcnemar_p, 1.0);
        assert_eq!(
            ar.flips,
            vec![
                Flip {
                    id: "0".into(),
                    lost: true
                },
                Flip {
                    id: "2".into(),
                    lost: false
                }
            ]
        );
        let pk = &g.suites["passkey"];
        assert_eq!((pk.lost, pk.gained), (1, 0));
        // One flip one way: p = 2 * 0.5 = 1.
        assert_eq!(pk.mcnemar_p, 1.0);
        assert_eq!(g.finish_reason_shifts.get("stop->length"), Some(&1));
        assert_eq!((g.degenerate_a, g.degenerate_b), (0, 1));
    }

    #[test]
    fn token_agreement_and_kl_on_hand_made_logprobs() {
        // Position 0: identical distributions. Position 1: same top-1, different spread.
        // Position 2: the produced tokens differ. Position 3 is never compared.
        let la = vec![
            tok("A", &[("A", 0.9), ("B", 0.1)]),
            tok("C", &[("C", 0.6), ("D", 0.4)]),
            tok("E", &[("E", 0.6), ("F", 0.4)]),
            tok("G", &[("G", 1.0)]),
        ];
        let lb = vec![
            tok("A", &[("A", 0.9), ("B", 0.1)]),
            tok("C", &[("C", 0.8), ("D", 0.2)]),
            tok("F", &[("F", 0.7), ("E", 0.3)]),
            tok("H", &[("H", 1.0)]),
        ];
        let mut a = rec("copy", "1", "ACEG", true);
        a.logprobs = Some(la);
        let mut b = rec("copy", "1", "ACFH", false);
        b.logprobs = Some(lb);
        let g = agreement(&[a], &[b]);
        assert_eq!(g.logprob_items, 1);
        assert_eq!(g.positions_compared, 3);
        assert!((g.top1_agreement.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(g.divergences[0].first_token, Some(2));
        assert_eq!(g.divergences[0].first_char, 2);
        // KL by hand: 0; 0.6 ln(0.6/0.8) + 0.4 ln(0.4/0.2); 0.6 ln(0.6/0.3) + 0.4 ln(0.4/0.7).
        let k1 = 0.6f64 * (0.6f64 / 0.8).ln() + 0.4 * (0.4f64 / 0.2).ln();
        let k2 = 0.6f64 * (0.6f64 / 0.3).ln() + 0.4 * (0.4f64 / 0.7).ln();
        let want = (0.0 + k1 + k2) / 3.0;
        assert!(
            (g.mean_kl.unwrap() - want).abs() < 1e-9,
            "{:?} vs {want}",
            g.mean_kl
        );
        assert!((g.max_kl.unwrap() - k1.max(k2)).abs() < 1e-9);
    }

    #[test]
    fn kl_fills_tokens_missing_from_one_top_k() {
        // A returns {x: .5, y: .3} (0.2 unreturned); B returns {x: .5, z: .4} (0.1 unreturned).
        // In A, z gets min(0.3, 0.2) = 0.2; in B, y gets min(0.4, 0.1) = 0.1.
        let a = tok("x", &[("x", 0.5), ("y", 0.3)]);
        let b = tok("x", &[("x", 0.5), ("z", 0.4)]);
        let (pa, pb) = ([0.5, 0.3, 0.2], [0.5, 0.1, 0.4]);
        let (sa, sb): (f64, f64) = (pa.iter().sum(), pb.iter().sum());
        let want: f64 = pa
            .iter()
            .zip(pb)
            .map(|(x, y)| (x / sa) * ((x / sa) / (y / sb)).ln())
            .sum();
        let got = kl_topk(&a, &b).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert_eq!(kl_topk(&a, &a), Some(0.0));
    }

    #[test]
    fn a_shorter_answer_diverges_where_it_stops() {
        let mut a = rec("copy", "1", "AB", true);
        a.logprobs = Some(vec![tok("A", &[("A", 1.0)]), tok("B", &[("B", 1.0)])]);
        let mut b = rec("copy", "1", "A", false);
        b.logprobs = Some(vec![tok("A", &[("A", 1.0)])]);
        let g = agreement(&[a], &[b]);
        assert_eq!(g.divergences[0].first_token, Some(1));
        assert_eq!(g.positions_compared, 1);
        assert_eq!(g.top1_agreement, Some(1.0));
    }
}
