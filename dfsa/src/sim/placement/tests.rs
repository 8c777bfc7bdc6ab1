use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::node::{Job, Node};
use super::views::SampledGossip;
use super::workload::{JobSource, JobSpec};
use super::*;

const GIB: u64 = 1024 * 1024 * 1024;

fn equal_nodes(n: usize) -> Vec<NodeSpec> {
    vec![
        NodeSpec {
            cpus: 1,
            speed: 10_000,
            mem_total: 8 * GIB,
            mem_base: GIB,
        };
        n
    ]
}

/// A short run: 20 s of warm-up, 40 s measured.
fn small(nodes: usize, seed: u64) -> PlacementSimConfig {
    let mut config = PlacementSimConfig::new(nodes, seed);
    config.warmup_ms = 20_000;
    config.measure_ms = 40_000;
    config.work.max_s = 30.0;
    config
}

fn job(seq: u64, work_ms: f64) -> JobSpec {
    JobSpec {
        seq,
        arrival_ms: 0,
        home: 0,
        work: work_ms,
        rss: 1 << 20,
    }
}

#[test]
fn processor_sharing_gives_each_job_its_share_of_the_cpus() {
    let spec = NodeSpec {
        cpus: 2,
        speed: 20_000,
        mem_total: 8 * GIB,
        mem_base: GIB,
    };
    let mut node = Node::new(0, spec, 2000, None);
    let mut jobs: Vec<Option<Job>> = (0..4).map(|i| Some(Job::new(job(i, 1e9), true))).collect();
    node.add(0, 0, &jobs);
    // One job alone: one whole CPU at speed 2, not both CPUs.
    node.advance(1000, &mut jobs);
    assert_eq!(jobs[0].as_ref().unwrap().done, 2000.0);
    for slot in 1..4 {
        node.add(1000, slot, &jobs);
    }
    // Four jobs on two CPUs: half a CPU each.
    node.advance(2000, &mut jobs);
    assert_eq!(jobs[0].as_ref().unwrap().done, 3000.0);
    assert_eq!(jobs[3].as_ref().unwrap().done, 1000.0);
    assert_eq!(jobs[3].as_ref().unwrap().cpu_ms, 500.0);
}

#[test]
fn the_smoothed_load_follows_the_runnable_count_with_its_time_constant() {
    let mut node = Node::new(0, equal_nodes(1)[0].clone(), 2000, Some(10_000));
    let jobs: Vec<Option<Job>> = vec![Some(Job::new(job(0, 1e9), true))];
    node.add(1000, 0, &jobs);
    let after_one_constant = node.smoothed(3000);
    assert!((after_one_constant - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
    // The history gives the same figure afterwards, and 0 before.
    assert_eq!(node.figures_at(3000).unwrap().0, after_one_constant);
    assert_eq!(node.figures_at(500).unwrap().0, 0.0);
}

#[test]
fn every_policy_finishes_every_job_with_exactly_its_work() {
    let config = small(6, 3);
    // The measured jobs, from the trace itself.
    let mut source = JobSource::for_config(&config);
    let window = config.warmup_ms..config.warmup_ms + config.measure_ms;
    let mut expected = 0;
    loop {
        let job = source.next_job();
        if job.arrival_ms >= window.end {
            break;
        }
        expected += usize::from(window.contains(&job.arrival_ms));
    }
    for policy in Policy::ALL {
        let outcome = run(&config, policy);
        assert_eq!(outcome.jobs, expected, "{policy:?}");
        assert_eq!(outcome.unfinished, 0, "{policy:?}");
        assert!(outcome.jobs_completed >= expected as u64, "{policy:?}");
        assert!(outcome.max_work_error < 1e-9, "{outcome:?}");
        // Nothing runs faster than alone on the fastest CPU.
        assert!(outcome.mean_slowdown >= 1.0, "{outcome:?}");
        if !policy.migrates() {
            assert_eq!(outcome.migrations, 0, "{policy:?}");
        }
    }
}

#[test]
fn omx_spreads_jobs_that_all_start_on_one_node() {
    // Four equal nodes; every job starts on node 1, which is offered 80%
    // of its capacity while the others idle.
    let mut config = small(4, 5);
    config.cluster = equal_nodes(4);
    config.homes = Homes::Hot { share: 1.0 };
    config.utilisation = 0.2;
    config.warmup_ms = 60_000;
    config.measure_ms = 120_000;
    let omx = run(&config, Policy::Omx);
    let home = run(&config, Policy::Home);
    assert!(omx.migrations > 0);
    assert!(
        omx.mean_slowdown < 0.75 * home.mean_slowdown,
        "omx {} vs home {}",
        omx.mean_slowdown,
        home.mean_slowdown
    );
    assert!(
        omx.mean_slowdown_long < 0.75 * home.mean_slowdown_long,
        "long jobs: omx {} vs home {}",
        omx.mean_slowdown_long,
        home.mean_slowdown_long
    );
}

#[test]
fn a_seed_gives_the_same_run_and_another_seed_another() {
    let config = small(8, 11);
    for policy in [Policy::Omx, Policy::PowerOfTwo, Policy::LeastLoadedStart] {
        assert_eq!(run(&config, policy), run(&config, policy), "{policy:?}");
    }
    let other = small(8, 12);
    assert_ne!(
        run(&config, Policy::Omx).mean_slowdown,
        run(&other, Policy::Omx).mean_slowdown
    );
}

#[test]
fn sampled_views_run_and_are_deterministic() {
    let mut config = small(100, 2);
    config.measure_ms = 5_000;
    config.arrivals_after_ms = Some(0);
    config.gossip = GossipModel::Sampled { profile_nodes: 100 };
    let first = run(&config, Policy::Omx);
    assert_eq!(first.unfinished, 0);
    assert!(first.view_entries > 1.0, "{first:?}");
    assert!(first.view_age_ms <= config.params.max_age_ms as f64);
    assert_eq!(first, run(&config, Policy::Omx));
}

#[test]
fn measured_gossip_ages_are_young_and_a_view_has_distinct_other_nodes() {
    let profiles = AgeProfiles::measure(200, 16, 1000, 10_000, 9);
    assert_eq!(profiles.tables.len(), 4 * 200);
    assert!(profiles.tables.iter().flatten().all(|age| *age <= 10_000));
    // A message brings 17 entries a step: far more than one message's worth
    // is young, but not the whole cluster.
    let entries = profiles.mean_entries();
    assert!((17.0..199.0).contains(&entries), "{entries}");

    let nodes: Vec<Node> = equal_nodes(50)
        .into_iter()
        .enumerate()
        .map(|(i, spec)| Node::new(i, spec, 2000, Some(11_000)))
        .collect();
    let mut sampled = SampledGossip::new(profiles, nodes.len(), 1);
    let mut view = Vec::new();
    sampled.view(7, 20_000, &nodes, &mut view);
    let mut ids: Vec<u16> = view.iter().map(|v| v.node.get()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), view.len());
    assert!(
        !ids.contains(&8),
        "node index 7 is id 8: never in its own view"
    );
}

#[test]
fn bounded_pareto_draws_have_the_stated_mean() {
    let work = BoundedPareto {
        alpha: 1.1,
        min_s: 0.5,
        max_s: 100.0,
    };
    let mut rng = SmallRng::seed_from_u64(4);
    let n = 400_000;
    let draws: Vec<f64> = (0..n).map(|_| work.sample(&mut rng)).collect();
    assert!(draws.iter().all(|x| (0.5..=100.0).contains(x)));
    let mean = draws.iter().sum::<f64>() / n as f64;
    assert!((mean / work.mean() - 1.0).abs() < 0.03, "{mean}");
    assert!((work.work_share_above(0.5) - 1.0).abs() < 1e-12);
    assert_eq!(work.work_share_above(100.0), 0.0);
}
