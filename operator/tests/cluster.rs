//! The operator against a real kube-apiserver, controller-manager, scheduler and
//! kwok (scripts/control-plane.sh): CRD validation, children with owner references,
//! spec changes, deletion through the garbage collector, the phase lifecycle,
//! results read from a real trader, restarts and leader election. Each test runs in
//! its own namespace with its own operator process.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use support::{Operator, condition, event_reasons, wait_for, wait_phase, with_temp_ns};
use ticklab_crd::{LatencyExperiment, MirrorSession, Phase, RecordingSession, SloVerdict};

const SELECTOR: &str = "app.kubernetes.io/managed-by=ticklab-operator";

fn experiment(name: &str, spec: Value) -> LatencyExperiment {
    serde_json::from_value(json!({
        "apiVersion": "ticklab.dev/v1alpha1",
        "kind": "LatencyExperiment",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

async fn create(client: &Client, ns: &str, e: &LatencyExperiment) -> LatencyExperiment {
    let api: Api<LatencyExperiment> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), e).await.unwrap()
}

async fn get(client: &Client, ns: &str, name: &str) -> LatencyExperiment {
    Api::<LatencyExperiment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

/// Names of the operator's children in `ns`, by kind, with their uids.
async fn children_of(client: &Client, ns: &str) -> BTreeMap<String, String> {
    async fn list<K>(client: &Client, ns: &str, out: &mut BTreeMap<String, String>)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        for o in api
            .list(&ListParams::default().labels(SELECTOR))
            .await
            .unwrap()
        {
            out.insert(
                format!("{}/{}", K::kind(&()), o.name_any()),
                o.uid().unwrap_or_default(),
            );
        }
    }
    let mut out = BTreeMap::new();
    list::<ConfigMap>(client, ns, &mut out).await;
    list::<Deployment>(client, ns, &mut out).await;
    list::<Service>(client, ns, &mut out).await;
    list::<StatefulSet>(client, ns, &mut out).await;
    list::<Secret>(client, ns, &mut out).await;
    out
}

fn expected_children(name: &str) -> Vec<String> {
    let mut v = vec![
        format!("ConfigMap/{name}-config"),
        format!("Deployment/{name}-exchange"),
        format!("Deployment/{name}-trader"),
        format!("Secret/{name}-mongodb"),
        format!("Service/{name}-exchange"),
        format!("Service/{name}-mongodb"),
        format!("Service/{name}-trader"),
        format!("StatefulSet/{name}-mongodb"),
    ];
    v.sort();
    v
}

/// The generation of each operator-managed Deployment in `ns`, once the deployment
/// controller has observed it (so the ReplicaSets of that generation exist).
async fn observed_deployments(client: &Client, ns: &str) -> BTreeMap<String, i64> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(
        "Deployments observed by their controller",
        Duration::from_secs(30),
        || {
            let deployments = deployments.clone();
            async move {
                let list = deployments
                    .list(&ListParams::default().labels(SELECTOR))
                    .await
                    .ok()?;
                let mut generations = BTreeMap::new();
                for d in list {
                    let generation = d.metadata.generation?;
                    if d.status.as_ref()?.observed_generation != Some(generation) {
                        return None;
                    }
                    generations.insert(d.name_any(), generation);
                }
                (!generations.is_empty()).then_some(generations)
            }
        },
    )
    .await
}

const SPEC: &str = r#"{"exchange": {"symbols": ["EURUSD", "BTCUSD"], "ratePerSecond": 2000}}"#;

fn spec() -> Value {
    serde_json::from_str(SPEC).unwrap()
}

#[tokio::test]
async fn invalid_resources_are_rejected_by_the_api_server_naming_the_field() {
    with_temp_ns("invalid", |client, ns| async move {
        let lexp = ApiResource::erase::<LatencyExperiment>(&());
        let rec = ApiResource::erase::<RecordingSession>(&());
        let mirror = ApiResource::erase::<MirrorSession>(&());
        let valid_lexp = json!({"name": "ok", "spec": spec()});
        // (resource, object, what the API server's 4xx message must contain: 422 for
        // schema and CEL violations, 400 for unknown fields under strict validation)
        let mut cases: Vec<(&ApiResource, Value, &str)> = Vec::new();
        let mut lexp_case = |patch: Value, expect: &'static str| {
            let mut object = valid_lexp.clone();
            json_merge(&mut object, patch);
            cases.push((&lexp, object, expect));
        };
        lexp_case(json!({"spec": {"exchange": {"ratePerSecond": 0}}}), "spec.exchange.ratePerSecond");
        lexp_case(json!({"spec": {"exchange": {"symbols": []}}}), "spec.exchange.symbols");
        lexp_case(json!({"spec": {"exchange": {"symbols": ["EURUSD", "DOGEMOON"]}}}), "spec.exchange.symbols[1]");
        lexp_case(json!({"spec": {"exchange": {"symbols": ["EURUSD", "EURUSD"]}}}), "Duplicate value");
        lexp_case(json!({"spec": {"exchange": {"transport": "pigeon"}}}), "spec.exchange.transport");
        lexp_case(json!({"spec": {"exchange": {"maxPacketBytes": 64}}}), "spec.exchange.maxPacketBytes");
        lexp_case(json!({"spec": {"exchange": {"faults": {"dropPercent": 150}}}}), "spec.exchange.faults.dropPercent");
        lexp_case(
            json!({"spec": {"exchange": {"microbursts": {"everyMillis": 10, "durationMillis": 10, "multiplier": 4}}}}),
            "durationMillis must be shorter than everyMillis",
        );
        lexp_case(json!({"spec": {"duration": "ten minutes"}}), "spec.duration");
        lexp_case(json!({"spec": {"duration": "0s"}}), "duration must be longer than zero");
        lexp_case(json!({"spec": {"slo": {}}}), "slo needs p99Micros or maxLossPercent");
        lexp_case(json!({"spec": {"slo": {"maxLossPercent": 101}}}), "spec.slo.maxLossPercent");
        lexp_case(
            json!({"spec": {"trader": {"persistence": {"enabled": false, "externalUriSecret": {"name": "db", "key": "uri"}}}}}),
            "externalUriSecret is set but persistence is disabled",
        );
        lexp_case(json!({"spec": {"placement": "sameRack"}}), "spec.placement");
        lexp_case(json!({"spec": {"trader": {"strategy": {"thresholdBps": 0.001}}}}), "spec.trader.strategy.thresholdBps");
        lexp_case(json!({"spec": {"trader": {"strategy": {"thresholdBps": 0}}}}), "thresholdBps must be at least 0.01");
        lexp_case(json!({"spec": {"slo": {"p99Micros": 0}}}), "p99Micros must be greater than zero");
        lexp_case(json!({"spec": {"exchange": {"ratePerSec": 5}}}), "unknown field \"spec.exchange.ratePerSec\"");
        lexp_case(json!({"name": "9lives"}), "metadata.name must start with a letter");
        lexp_case(json!({"name": "a".repeat(41)}), "metadata.name must be at most 40 characters");
        cases.push((&lexp, json!({"name": "noexchange", "spec": {"duration": "5s"}}), "spec.exchange: Required value"));
        cases.push((&rec, json!({"name": "rec", "spec": {"experiment": "ok", "storage": "lots"}}), "spec.storage"));
        cases.push((
            &rec,
            json!({"name": "rec", "spec": {"experiment": "ok", "rotation": {"maxMegabytes": 0}}}),
            "spec.rotation.maxMegabytes",
        ));
        cases.push((&mirror, json!({"name": "m", "spec": {"experiment": "ok", "vni": 16_777_216}}), "spec.vni"));
        cases.push((&mirror, json!({"name": "m", "spec": {"experiment": "ok", "packetLength": 8501}}), "spec.packetLength"));
        let eleven: Vec<_> = (0..11).map(|_| json!({"direction": "egress"})).collect();
        cases.push((&mirror, json!({"name": "m", "spec": {"experiment": "ok", "filter": eleven}}), "at most 10 rules per direction"));
        cases.push((&mirror, json!({"name": "m", "spec": {"experiment": "ok", "mode": "tap"}}), "spec.mode"));

        let mut failures = Vec::new();
        for (resource, object, expect) in &cases {
            match create_strict(&client, &ns, resource, object).await {
                Ok(()) => failures.push(format!("accepted: {object}")),
                Err(kube::Error::Api(status)) if (400..500).contains(&status.code) && status.message.contains(expect) => {}
                Err(other) => failures.push(format!("{object}\n    expected a 4xx naming {expect:?}, got: {other}")),
            }
        }
        assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len(), failures.join("\n"));
        assert!(cases.len() >= 15);

        // The valid base is accepted, so the rejections above are about the fields.
        apply_strict(&client, &ns, &lexp, &valid_lexp).await.unwrap();

        // Immutable fields: accepted at creation, refused when changed.
        let recording = json!({"name": "rec", "spec": {"experiment": "ok", "storage": "1Gi"}});
        apply_strict(&client, &ns, &rec, &recording).await.unwrap();
        let moved = json!({"name": "rec", "spec": {"experiment": "other", "storage": "1Gi"}});
        let e = apply_strict(&client, &ns, &rec, &moved).await.unwrap_err();
        assert!(e.to_string().contains("experiment is immutable"), "{e}");
        let grown = json!({"name": "rec", "spec": {"experiment": "ok", "storage": "2Gi"}});
        let e = apply_strict(&client, &ns, &rec, &grown).await.unwrap_err();
        assert!(e.to_string().contains("storage is immutable"), "{e}");
        let mirror_session = json!({"name": "m", "spec": {"experiment": "ok"}});
        apply_strict(&client, &ns, &mirror, &mirror_session).await.unwrap();
        let e = apply_strict(&client, &ns, &mirror, &json!({"name": "m", "spec": {"experiment": "ok", "mode": "vpc"}}))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("mode is immutable"), "{e}");
    })
    .await;
}

fn json_merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (k, v) in patch {
                json_merge(base.entry(k).or_insert(Value::Null), v);
            }
        }
        (base, patch) => *base = patch,
    }
}

/// Creates the object with strict field validation, as `kubectl create` does
/// (server-side apply reports duplicates and unknown fields as 500s instead).
async fn create_strict(
    client: &Client,
    ns: &str,
    resource: &ApiResource,
    object: &Value,
) -> Result<(), kube::Error> {
    let body = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": object["name"]},
        "spec": object["spec"],
    });
    let url = format!(
        "/apis/{}/{}/namespaces/{ns}/{}",
        resource.group, resource.version, resource.plural
    );
    let mut request = kube::core::Request::new(url)
        .create(&PostParams::default(), serde_json::to_vec(&body).unwrap())
        .unwrap();
    let uri = request.uri().to_string();
    let separator = if uri.ends_with('?') {
        ""
    } else if uri.contains('?') {
        "&"
    } else {
        "?"
    };
    *request.uri_mut() = format!("{uri}{separator}fieldValidation=Strict")
        .parse()
        .unwrap();
    // A create that succeeds would leave the object behind for the next case.
    let created: Value = client.request(request).await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    let _ = api
        .delete(
            created["metadata"]["name"].as_str().unwrap(),
            &DeleteParams::default(),
        )
        .await;
    Ok(())
}

/// Server-side apply with strict field validation, as `kubectl apply` does.
async fn apply_strict(
    client: &Client,
    ns: &str,
    resource: &ApiResource,
    object: &Value,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    let name = object["name"].as_str().unwrap();
    let body = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": name},
        "spec": object["spec"],
    });
    api.patch(
        name,
        &PatchParams::apply("ticklab-tests").validation_strict(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}

#[tokio::test]
async fn an_experiment_runs_completes_and_is_removed_with_its_children() {
    with_temp_ns("lifecycle", |client, ns| async move {
        let _operator = Operator::start(&ns, "lifecycle", &[]);
        let mut spec = spec();
        spec["duration"] = json!("6s");
        let created = create(&client, &ns, &experiment("lab", spec)).await;
        let uid = created.uid().unwrap();

        let children = wait_for("every child", Duration::from_secs(30), || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let c = children_of(&client, &ns).await;
                (c.keys().cloned().collect::<Vec<_>>() == expected_children("lab")).then_some(c)
            }
        })
        .await;
        // Each child is owned by the experiment (controller reference).
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        for d in deployments
            .list(&ListParams::default().labels(SELECTOR))
            .await
            .unwrap()
        {
            let owner = &d.owner_references()[0];
            assert_eq!(
                (owner.uid.as_str(), owner.controller),
                (uid.as_str(), Some(true))
            );
        }
        let secret: Secret = Api::namespaced(client.clone(), &ns)
            .get("lab-mongodb")
            .await
            .unwrap();
        assert_eq!(secret.owner_references()[0].uid, uid);

        // kwok runs the pods: Pending -> Running.
        let running =
            wait_phase(&client, &ns, "lab", Phase::Running, Duration::from_secs(60)).await;
        let status = running.status.unwrap();
        assert!(status.started_at.is_some());
        assert_eq!(status.observed_generation, Some(1));
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "WorkloadsAvailable")
        );
        assert_eq!(
            status.endpoints.unwrap().trader.as_deref(),
            Some(format!("http://lab-trader.{ns}.svc:9190").as_str())
        );

        // After spec.duration: Completed, exchange and trader scaled to zero.
        let completed = wait_phase(
            &client,
            &ns,
            "lab",
            Phase::Completed,
            Duration::from_secs(30),
        )
        .await;
        let status = completed.status.unwrap();
        let done = condition(&status, "Completed");
        // kwok's pods run nothing: no trader answers, and the condition says the
        // results could not be read rather than calling them final.
        assert_eq!(
            (done.status.as_str(), done.reason.as_str()),
            ("True", "ResultsUnavailable"),
            "{done:?}"
        );
        assert!(done.message.contains("cannot be read"), "{done:?}");
        for name in ["lab-exchange", "lab-trader"] {
            wait_for(
                &format!("{name} scaled to zero"),
                Duration::from_secs(30),
                || async {
                    let d = deployments.get(name).await.ok()?;
                    (d.spec?.replicas == Some(0)).then_some(())
                },
            )
            .await;
        }
        let reasons = wait_for(
            "events Pending, Running, Completed",
            Duration::from_secs(30),
            || {
                let client = client.clone();
                let ns = ns.clone();
                async move {
                    let reasons = event_reasons(&client, &ns, "lab").await;
                    (reasons == ["Pending", "Running", "Completed"]).then_some(reasons)
                }
            },
        )
        .await;
        assert_eq!(reasons.len(), 3);

        // Deleting the experiment removes every child through the garbage collector.
        Api::<LatencyExperiment>::namespaced(client.clone(), &ns)
            .delete("lab", &DeleteParams::background())
            .await
            .unwrap();
        wait_for(
            "children garbage-collected",
            Duration::from_secs(60),
            || {
                let client = client.clone();
                let ns = ns.clone();
                async move { children_of(&client, &ns).await.is_empty().then_some(()) }
            },
        )
        .await;
        assert!(!children.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_spec_change_updates_the_children_and_rolls_the_pods() {
    with_temp_ns("change", |client, ns| async move {
        let _operator = Operator::start(&ns, "change", &[]);
        create(&client, &ns, &experiment("lab", spec())).await;
        wait_phase(&client, &ns, "lab", Phase::Running, Duration::from_secs(60)).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let hash = |d: &Deployment| {
            d.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()["ticklab.dev/config-hash"]
                .clone()
        };
        let before = hash(&deployments.get("lab-exchange").await.unwrap());
        let password = secrets.get("lab-mongodb").await.unwrap().data.unwrap()["password"].clone();

        let patch =
            json!({"spec": {"exchange": {"ratePerSecond": 3000}, "placement": "differentNodes"}});
        Api::<LatencyExperiment>::namespaced(client.clone(), &ns)
            .patch("lab", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();

        wait_for(
            "ConfigMap with the new rate",
            Duration::from_secs(30),
            || {
                let client = client.clone();
                let ns = ns.clone();
                async move {
                    let cm: ConfigMap =
                        Api::namespaced(client, &ns).get("lab-config").await.ok()?;
                    cm.data?["exchange.yaml"]
                        .contains("ratePerSecond: 3000")
                        .then_some(())
                }
            },
        )
        .await;
        // The children are applied concurrently: the new ConfigMap says nothing about
        // the Deployments yet. A new configuration rolls the exchange, and
        // differentNodes turns the trader's affinity into anti-affinity.
        let affinity_of = |d: &Deployment| {
            d.spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|p| p.affinity.clone())
        };
        wait_for(
            "the exchange rolled and the trader apart from it",
            Duration::from_secs(30),
            || async {
                let exchange = deployments.get("lab-exchange").await.ok()?;
                let trader = deployments.get("lab-trader").await.ok()?;
                let affinity = affinity_of(&trader)?;
                (hash(&exchange) != before
                    && affinity.pod_anti_affinity.is_some()
                    && affinity.pod_affinity.is_none())
                .then_some(())
            },
        )
        .await;
        // The controller-manager rolled out a new ReplicaSet for the new template.
        wait_for(
            "a second exchange ReplicaSet",
            Duration::from_secs(30),
            || {
                let client = client.clone();
                let ns = ns.clone();
                async move {
                    let sets: Api<ReplicaSet> = Api::namespaced(client, &ns);
                    let n = sets
                        .list(&ListParams::default().labels("app.kubernetes.io/component=exchange"))
                        .await
                        .ok()?
                        .items
                        .len();
                    (n == 2).then_some(())
                }
            },
        )
        .await;
        let e = wait_for("status of generation 2", Duration::from_secs(30), || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let e = get(&client, &ns, "lab").await;
                (e.status.as_ref()?.observed_generation == Some(2)).then_some(e)
            }
        })
        .await;
        assert_eq!(e.metadata.generation, Some(2));
        // Checked after the reconcile of generation 2 has written its status, that
        // is after it applied every child, the Secret included.
        assert_eq!(
            secrets.get("lab-mongodb").await.unwrap().data.unwrap()["password"],
            password,
            "the generated password survives reconciles"
        );
    })
    .await;
}

#[tokio::test]
async fn an_operator_restart_creates_no_duplicate_children() {
    with_temp_ns("restart", |client, ns| async move {
        let mut first = Operator::start(&ns, "first", &[]);
        create(&client, &ns, &experiment("lab", spec())).await;
        wait_phase(&client, &ns, "lab", Phase::Running, Duration::from_secs(60)).await;
        let before = children_of(&client, &ns).await;
        let generations = observed_deployments(&client, &ns).await;
        let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
        let replica_sets = sets.list(&ListParams::default()).await.unwrap().items.len();
        first.kill();

        let second = Operator::start(&ns, "second", &[]);
        // The new process leads (after the crashed one's Lease expires) and finishes
        // a reconcile: the duration histogram counts a run when it ends, so its writes
        // are done. (Whether a second run follows depends on whether the children's
        // initial watch events arrive during the first or are merged into it.)
        wait_for(
            "the restarted operator to finish a reconcile",
            Duration::from_secs(60),
            || {
                let second = &second;
                async move {
                    let n = second
                        .metric("ticklab_operator_reconcile_duration_seconds_count")
                        .await?;
                    (n >= 1.0).then_some(())
                }
            },
        )
        .await;
        let after = children_of(&client, &ns).await;
        assert_eq!(before, after, "same children, same uids");
        // Its writes are done, but a rollout they caused is the deployment
        // controller's, later: wait until it has seen the latest generation of every
        // Deployment before counting.
        assert_eq!(
            observed_deployments(&client, &ns).await,
            generations,
            "no pod template change"
        );
        assert_eq!(
            sets.list(&ListParams::default()).await.unwrap().items.len(),
            replica_sets,
            "no rollout"
        );
        assert_eq!(
            get(&client, &ns, "lab").await.status.unwrap().phase,
            Some(Phase::Running)
        );
    })
    .await;
}

#[tokio::test]
async fn two_operators_elect_one_leader_and_the_other_takes_over() {
    with_temp_ns("leader", |client, ns| async move {
        let mut a = Operator::start(&ns, "replica-a", &[]);
        let mut b = Operator::start(&ns, "replica-b", &[]);
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let holder = || {
            let leases = leases.clone();
            async move {
                leases
                    .get("ticklab-operator")
                    .await
                    .ok()?
                    .spec?
                    .holder_identity
                    .filter(|h| !h.is_empty())
            }
        };
        let first = wait_for("a leader", Duration::from_secs(30), holder).await;
        let (leader, standby) = if first == "replica-a" {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        wait_for("the leader's gauge", Duration::from_secs(10), || async {
            (leader.metric("ticklab_operator_leader").await? == 1.0).then_some(())
        })
        .await;
        // Both start cold: the standby's admin port may come up well after the leader
        // won. Ready means it is configured and in the election, so an experiment
        // created from here on is one a standby that wrongly reconciled would touch.
        standby.wait_ready(Duration::from_secs(30)).await;
        assert_eq!(
            standby
                .wait_metric("ticklab_operator_leader", Duration::from_secs(10))
                .await,
            0.0
        );
        create(&client, &ns, &experiment("one", spec())).await;
        wait_phase(&client, &ns, "one", Phase::Running, Duration::from_secs(60)).await;
        assert_eq!(
            standby
                .wait_metric(
                    "ticklab_operator_reconciliations_total",
                    Duration::from_secs(10)
                )
                .await,
            0.0,
            "the standby waits"
        );

        // The leader stops cleanly and releases the Lease; the standby takes over.
        assert_eq!(leader.stop(), Some(0));
        let standby_name = standby.identity.clone();
        wait_for(
            "the standby to hold the Lease",
            Duration::from_secs(30),
            || {
                let standby_name = standby_name.clone();
                async move { (holder().await? == standby_name).then_some(()) }
            },
        )
        .await;
        create(&client, &ns, &experiment("two", spec())).await;
        wait_phase(&client, &ns, "two", Phase::Running, Duration::from_secs(60)).await;
        wait_for(
            "the new leader's gauge",
            Duration::from_secs(10),
            || async { (standby.metric("ticklab_operator_leader").await? == 1.0).then_some(()) },
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn results_come_from_the_trader_and_stay_after_completion() {
    with_temp_ns("results", |client, ns| async move {
        let mut spec = spec();
        spec["duration"] = json!("5s");
        spec["slo"] = json!({"maxLossPercent": 100});
        let lab = experiment("lab", spec);
        // A real exchange and trader on loopback stand in for the pods kwok
        // pretends to run; the operator reads the trader's /stats from there.
        let pair = support_pair::LocalPair::start(&lab).await;
        let stats_url = format!("http://{}/stats", pair.trader_api);
        let _operator = Operator::start(&ns, "results", &["--stats-url", &stats_url]);
        create(&client, &ns, &lab).await;
        // The trader's counts and its latency summary are published separately (the
        // latency by a merger thread), so a first /stats with trades in it may not
        // have the latency yet: wait for results that have both, and a verdict.
        let running = wait_for("results in status", Duration::from_secs(60), || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let e = get(&client, &ns, "lab").await;
                let results = e.status.as_ref()?.results.as_ref()?;
                (results.received > 0
                    && results.feed_latency.is_some()
                    && results.slo_verdict.is_some())
                .then_some(e)
            }
        })
        .await;
        let results = running.status.unwrap().results.unwrap();
        assert_eq!(results.slo_verdict, Some(SloVerdict::Met));

        let completed = wait_phase(
            &client,
            &ns,
            "lab",
            Phase::Completed,
            Duration::from_secs(30),
        )
        .await;
        let status = completed.status.unwrap();
        let final_results = status.results.clone().unwrap();
        assert!(
            final_results.received >= results.received,
            "final results read as the run ended"
        );
        // The run ended when the trader had the whole feed: final, not cut short.
        let completed_condition = condition(&status, "Completed");
        assert_eq!(
            completed_condition.reason, "FeedEnded",
            "{completed_condition:?}"
        );
        assert_eq!(
            final_results.sent,
            pair.published(),
            "the final results count every trade the exchange published: {final_results:?}"
        );
        let slo = condition(&status, "SLOMet");
        assert_eq!(slo.status, "True");
        pair.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_missing_external_mongodb_secret_fails_the_experiment_with_a_reason() {
    with_temp_ns("secret", |client, ns| async move {
        let _operator = Operator::start(&ns, "secret", &[]);
        let mut spec = spec();
        spec["trader"] =
            json!({"persistence": {"externalUriSecret": {"name": "shared-db", "key": "uri"}}});
        create(&client, &ns, &experiment("lab", spec)).await;
        let failed = wait_phase(&client, &ns, "lab", Phase::Failed, Duration::from_secs(30)).await;
        let status = failed.status.unwrap();
        let ready = condition(&status, "Ready");
        assert_eq!(ready.reason, "SecretNotFound");
        assert!(ready.message.contains("\"shared-db\""), "{}", ready.message);
        // No operator-managed MongoDB when an external one is named: checked once the
        // operator has applied the experiment's children, when a StatefulSet it
        // wrongly built would exist too.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        wait_for("the trader Deployment", Duration::from_secs(30), || async {
            deployments.get_opt("lab-trader").await.ok()?.map(|_| ())
        })
        .await;
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        assert!(
            sets.list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn a_replay_of_a_missing_recording_fails_naming_what_is_missing() {
    with_temp_ns("replay", |client, ns| async move {
        let _operator = Operator::start(&ns, "replay", &[]);
        let spec = json!({
            "exchange": {"replay": {"recording": "tape", "file": "tape-1.pcap", "speed": 10}},
            "trader": {"persistence": {"enabled": false}},
        });
        create(&client, &ns, &experiment("replayer", spec)).await;
        let failed = wait_phase(
            &client,
            &ns,
            "replayer",
            Phase::Failed,
            Duration::from_secs(30),
        )
        .await;
        let status = failed.status.unwrap();
        let ready = condition(&status, "Ready");
        assert_eq!(ready.reason, "ReplaySourceNotFound");
        assert!(
            ready
                .message
                .contains("RecordingSession \"tape\" does not exist"),
            "{}",
            ready.message
        );
    })
    .await;
}

#[test]
fn the_operator_refuses_to_start_without_its_crds() {
    // The second API server of the test control plane has no ticklab CRDs.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ticklab-operator"))
        .env("KUBECONFIG", support::bare_kubeconfig())
        .args(["--admin-listen", "127.0.0.1:0", "--log-format", "text"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ticklab-operator: the CustomResourceDefinition latencyexperiments.ticklab.dev is not installed"),
        "{stderr}"
    );
}

/// A real exchange and trader on loopback (the same libraries the pods run).
mod support_pair {
    use std::net::SocketAddr;

    use ticklab_crd::{LatencyExperiment, Transport};
    use ticklab_exchange::ExchangeConfig;
    use ticklab_trader::TraderConfig;
    use tokio_util::sync::CancellationToken;

    pub struct LocalPair {
        pub trader_api: SocketAddr,
        stop: CancellationToken,
        trader: ticklab_trader::TraderHandle,
        exchange: ticklab_exchange::ExchangeHandle,
    }

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    impl LocalPair {
        pub async fn start(lab: &LatencyExperiment) -> Self {
            let spec = &lab.spec;
            assert_eq!(spec.exchange.transport, Transport::Udp);
            let retransmit = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let stop = CancellationToken::new();
            let mut trader_spec = spec.trader.clone();
            trader_spec.persistence.enabled = false;
            let trader = ticklab_trader::start(
                TraderConfig {
                    experiment: "lab".into(),
                    symbols: spec.exchange.symbols.clone(),
                    spec: trader_spec,
                    transport: Transport::Udp,
                    feed_udp_listen: loopback(0),
                    feed_connect: String::new(),
                    retransmit_server: retransmit.to_string(),
                    order_tcp: loopback(super::support::free_port()).to_string(),
                    order_http: "http://127.0.0.1:1".into(),
                    api_listen: loopback(0),
                    mongodb_uri: None,
                    mongodb_wait_seconds: 0,
                    slo: spec.slo.clone(),
                    recovery_timeout_ms: 50,
                    tls: None,
                },
                prometheus::Registry::new(),
                stop.clone(),
            )
            .await
            .unwrap();
            // As in a pod: the feed runs for spec.duration from the trader's
            // subscription, then the session ends.
            let mut config = ExchangeConfig::local(
                "lab",
                spec.exchange.clone(),
                spec.run_duration(),
                trader.addrs.feed_udp.map(|a| a.to_string()),
            );
            config.retransmit_listen = retransmit;
            let exchange =
                ticklab_exchange::start(config, prometheus::Registry::new(), stop.clone())
                    .await
                    .unwrap();
            Self {
                trader_api: trader.addrs.api,
                stop,
                trader,
                exchange,
            }
        }

        pub fn published(&self) -> u64 {
            self.exchange
                .stats
                .trades_published
                .load(std::sync::atomic::Ordering::Acquire)
        }

        pub async fn stop(self) {
            self.stop.cancel();
            let _ = self.trader.join().await;
            let _ = self.exchange.join().await;
        }
    }
}
