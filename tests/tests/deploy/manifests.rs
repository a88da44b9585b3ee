//! The Kubernetes manifests and the Helm chart: rendered by Helm's engine, equal to the plain
//! manifests, valid against the Kubernetes schemas, clean under checkov, consistent with the
//! systemd unit and with themselves, and carrying configuration files the daemon accepts.

use std::path::{Path, PathBuf};

use rmm_tests::{TempDir, Value, monitor_bin};

use crate::{
    KUBE_VERSIONS, chart_dir, path_str, plain_dir, render_chart, render_py, run_ok, tool,
    unit_capabilities, unit_service_settings, workspace, yaml_docs,
};

fn plain_manifest() -> PathBuf {
    plain_dir().join("rmm-monitor.yaml")
}

fn plain_servicemonitor() -> PathBuf {
    plain_dir().join("optional/servicemonitor.yaml")
}

fn ci_values(name: &str) -> PathBuf {
    chart_dir().join("ci").join(name)
}

/// The chart rendered with its defaults and with every option on, written to `dir`.
fn write_renders(dir: &Path) -> Vec<PathBuf> {
    let all = ci_values("all-values.yaml");
    let mut out = Vec::new();
    for (name, values) in [
        ("defaults.yaml", vec![]),
        ("all-values.yaml", vec![all.as_path()]),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, render_chart(&values))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        out.push(path);
    }
    out
}

#[test]
fn plain_manifests_are_the_chart_rendered() {
    // Fails with a diff when someone edited one and not the other.
    let chart = chart_dir();
    let plain = plain_dir();
    render_py(&["plain", path_str(&chart), path_str(&plain), "--check"]);
}

#[test]
fn chart_passes_helm_lint() {
    let chart = chart_dir();
    let all = ci_values("all-values.yaml");
    for values in [None, Some(&all)] {
        let mut args = vec!["lint", path_str(&chart), "--kube-version", "v1.30.0"];
        if let Some(v) = values {
            args.extend(["-f", path_str(v)]);
        }
        let run = render_py(&args);
        println!("helm lint {values:?}:\n{}", run.stdout);
    }
}

#[test]
fn manifests_match_the_kubernetes_schemas() {
    let validate = tool("kubernetes-validate", "kubernetes-validate");
    let tmp = TempDir::new("deploy-schemas");
    let mut files = vec![plain_manifest(), plain_servicemonitor()];
    files.extend(write_renders(tmp.path()));
    for version in KUBE_VERSIONS {
        let mut args = vec!["--strict", "-k", version];
        args.extend(files.iter().map(|f| path_str(f)));
        let run = run_ok(&validate, &args);
        println!("kubernetes-validate {version}:\n{}", run.stdout);
        // Something was validated, and nothing but the ServiceMonitor (a CRD: checked for
        // consistency in `objects_agree_with_the_unit_and_each_other`) lacked a schema.
        for kind in [
            "daemonset",
            "configmap",
            "service",
            "networkpolicy",
            "namespace",
        ] {
            assert!(
                run.stdout
                    .lines()
                    .any(|l| l.contains(&format!("passed for resource {kind}/"))),
                "kubernetes-validate {version} validated no {kind}:\n{}",
                run.stdout
            );
        }
        for l in run.stdout.lines().chain(run.stderr.lines()) {
            assert!(
                !l.contains("Couldn't find schema") || l.contains("kind ServiceMonitor"),
                "kubernetes-validate {version} had no schema for an object: {l}"
            );
        }
    }
}

/// The `skip-check` list of deploy/kubernetes/.checkov.yaml.
fn checkov_skips(config: &Path) -> Vec<String> {
    let docs = yaml_docs(&[config]);
    docs.first()
        .and_then(|d| d["skip-check"].as_array())
        .unwrap_or_else(|| panic!("{} has no skip-check list", config.display()))
        .iter()
        .map(|c| c.as_str().expect("check ids are strings").to_owned())
        .collect()
}

fn assert_checkov_clean(run: &rmm_tests::HelperRun, what: &str) {
    let out = &run.stdout;
    let passed = out
        .lines()
        .find_map(|l| l.strip_prefix("Passed checks: "))
        .unwrap_or_else(|| panic!("checkov printed no summary for {what}:\n{out}"));
    assert!(
        passed.contains("Failed checks: 0,") && !passed.starts_with("0,"),
        "checkov on {what}: {passed}\n{out}"
    );
    println!("checkov on {what}: {passed}");
}

#[test]
fn manifests_pass_checkov() {
    let checkov = tool("checkov", "checkov");
    let config = plain_dir().join(".checkov.yaml");
    // The plain manifests (and the optional ServiceMonitor) with the configuration as it is.
    let plain = plain_dir();
    let run = run_ok(
        &checkov,
        &["--config-file", path_str(&config), "-d", path_str(&plain)],
    );
    assert_checkov_clean(&run, "deploy/kubernetes");

    // The chart with its defaults as it is; with every option on (a registry image pinned by
    // digest, pulled Always), the image checks are enforced too.
    let tmp = TempDir::new("deploy-checkov");
    let renders = write_renders(tmp.path());
    for (render, image_checks) in renders.iter().zip([false, true]) {
        let dir = tmp.path().join(
            render
                .file_stem()
                .expect("render files have names")
                .to_string_lossy()
                .into_owned(),
        );
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::rename(render, dir.join("rmm-monitor.yaml")).expect("moving the render");
        let mut skips = checkov_skips(&config);
        if image_checks {
            skips.retain(|c| c != "CKV_K8S_15" && c != "CKV_K8S_43");
        }
        let skips = skips.join(",");
        let run = run_ok(
            &checkov,
            &[
                "--config-file",
                path_str(&config),
                "--skip-check",
                &skips,
                "-d",
                path_str(&dir),
            ],
        );
        assert_checkov_clean(&run, &format!("the chart render {}", dir.display()));
    }
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    match kind(docs, k).as_slice() {
        [d] => d,
        other => panic!("expected one {k}, found {}", other.len()),
    }
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every `key: value` of `sub` is in `map`.
fn labels_within(sub: &Value, map: &Value) -> bool {
    sub.as_object()
        .is_some_and(|s| s.iter().all(|(k, v)| map.get(k) == Some(v)))
}

/// What the daemon's container holds beyond the unit's CapabilityBoundingSet (see below).
const CONTAINER_ONLY_CAPS: &[&str] = &["DAC_READ_SEARCH", "SYS_RESOURCE"];

/// The design, checked on the plain manifests and on the chart with every option on.
fn check_objects(docs: &[Value], what: &str) {
    let unit = std::fs::read_to_string(workspace().join("deploy/systemd/rmm-monitor.service"))
        .expect("reading the systemd unit");
    // A container gets the unit's capabilities and two the unit does without: SYS_RESOURCE,
    // because a pod cannot set RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit) and kernels before
    // 5.11 charge BPF maps to it; DAC_READ_SEARCH, for open_by_handle_at (the cgroup lookup by
    // id), which the unit's syscall filter refuses anyway.
    let mut unit_caps = unit_capabilities(&unit_service_settings(&unit));
    unit_caps.extend(CONTAINER_ONLY_CAPS.iter().map(|c| (*c).to_owned()));

    let ds = one(docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert!(
        labels_within(&ds["spec"]["selector"]["matchLabels"], pod_labels),
        "{what}: the selector does not select the pod template"
    );
    assert_eq!(pod["hostPID"], true, "{what}: hostPID");
    for k in ["hostNetwork", "hostIPC", "shareProcessNamespace"] {
        assert!(pod[k].is_null() || pod[k] == false, "{what}: {k} is set");
    }
    assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
    let seccomp = &pod["securityContext"]["seccompProfile"]["type"];
    assert!(
        seccomp == "RuntimeDefault" || seccomp == "Localhost",
        "{what}: seccomp profile {seccomp}"
    );
    let tolerations = pod["tolerations"].as_array().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null()),
        "{what}: no toleration of every taint (control-plane included): {tolerations:?}"
    );

    let containers = pod["containers"].as_array().expect("containers");
    for c in containers {
        let sc = &c["securityContext"];
        let name = &c["name"];
        assert_eq!(sc["privileged"], false, "{what}: {name} privileged");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}: {name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}: {name}");
        assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"], "{what}: {name}");
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            assert!(
                m["subPath"].is_null() && m["subPathExpr"].is_null(),
                "{what}: {name} mounts {} with a subPath (never updated by the kubelet)",
                m["mountPath"]
            );
            assert_eq!(m["readOnly"], true, "{what}: {name} mounts {m} writable");
        }
        assert!(
            c["resources"]["limits"]["memory"].is_string()
                && c["resources"]["requests"]["cpu"].is_string(),
            "{what}: {name} has no resource requests and limits"
        );
    }
    let daemon = containers
        .iter()
        .find(|c| c["name"] == "rmm-monitor")
        .expect("the rmm-monitor container");
    assert_eq!(
        strs(&daemon["securityContext"]["capabilities"]["add"]),
        unit_caps,
        "{what}: the daemon's capabilities differ from the unit's CapabilityBoundingSet and the container-only ones"
    );
    if let Some(reloader) = containers.iter().find(|c| c["name"] == "reloader") {
        assert!(
            reloader["securityContext"]["capabilities"]["add"].is_null(),
            "{what}: the reloader has capabilities"
        );
    }

    // Host directories: read-only, at the node's own paths.
    let volumes = pod["volumes"].as_array().expect("volumes");
    let host_path = |mount: &str| {
        let m = daemon["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["mountPath"] == mount)
            .unwrap_or_else(|| panic!("{what}: nothing mounted on {mount}"));
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("{what}: no volume {}", m["name"]));
        v["hostPath"]["path"].as_str().map(str::to_owned)
    };
    for p in [
        "/sys/kernel/tracing",
        "/sys/kernel/btf",
        "/sys/fs/cgroup",
        "/var/log/pods",
        "/run/systemd/journal",
    ] {
        assert_eq!(host_path(p).as_deref(), Some(p), "{what}: {p}");
    }
    assert_eq!(
        host_path("/etc/rmm-monitor"),
        None,
        "{what}: config is not a hostPath"
    );

    // Configuration: config.toml and every rules file, projected from the ConfigMaps.
    let config = volumes
        .iter()
        .find(|v| v["name"] == "config")
        .expect("the config volume");
    let mut projected: Vec<(String, String)> = Vec::new();
    for s in config["projected"]["sources"].as_array().expect("sources") {
        let cm = s["configMap"]["name"].as_str().expect("a ConfigMap source");
        for i in s["configMap"]["items"].as_array().expect("items") {
            projected.push((
                format!("{cm}/{}", i["key"].as_str().expect("key")),
                i["path"].as_str().expect("path").to_owned(),
            ));
        }
    }
    let mut expected = Vec::new();
    for cm in kind(docs, "ConfigMap") {
        let name = cm["metadata"]["name"].as_str().expect("name");
        for key in cm["data"].as_object().into_iter().flatten().map(|(k, _)| k) {
            if key == "config.toml" {
                expected.push((format!("{name}/{key}"), key.clone()));
            } else if key.ends_with(".toml") {
                expected.push((format!("{name}/{key}"), format!("rules.d/{key}")));
            }
        }
    }
    projected.sort();
    expected.sort();
    assert_eq!(projected, expected, "{what}: projected configuration files");

    // The reloader runs the chart's script.
    let script = std::fs::read_to_string(chart_dir().join("files/reloader.sh"))
        .expect("reading files/reloader.sh");
    let shipped = kind(docs, "ConfigMap")
        .into_iter()
        .find_map(|cm| cm["data"]["reloader.sh"].as_str())
        .unwrap_or_else(|| panic!("{what}: no ConfigMap holds reloader.sh"));
    assert_eq!(
        shipped, script,
        "{what}: reloader.sh differs from files/reloader.sh"
    );

    // Metrics: the flag, the container port, the probes, the Service and the NetworkPolicy
    // agree.
    let args = strs(&daemon["args"]);
    let listen = args
        .iter()
        .position(|a| *a == "--metrics")
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("{what}: no --metrics flag: {args:?}"));
    let port = daemon["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "metrics"))
        .unwrap_or_else(|| panic!("{what}: no metrics container port"))["containerPort"]
        .as_u64()
        .expect("containerPort");
    assert!(
        listen.ends_with(&format!(":{port}")),
        "{what}: --metrics {listen} against containerPort {port}"
    );
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(
            daemon[probe]["httpGet"]["port"], "metrics",
            "{what}: {probe} of the daemon"
        );
    }
    let svc = one(docs, "Service");
    assert_eq!(svc["spec"]["clusterIP"], "None", "{what}: headless");
    assert!(
        labels_within(&svc["spec"]["selector"], pod_labels),
        "{what}: the Service selects no daemon pod"
    );
    let svc_port = &svc["spec"]["ports"][0];
    assert_eq!(svc_port["port"], port, "{what}: Service port");
    assert_eq!(svc_port["targetPort"], "metrics", "{what}");
    let np = one(docs, "NetworkPolicy");
    assert!(
        labels_within(&np["spec"]["podSelector"]["matchLabels"], pod_labels),
        "{what}: the NetworkPolicy selects no daemon pod"
    );
    assert_eq!(
        np["spec"]["ingress"][0]["ports"][0]["port"], "metrics",
        "{what}: the NetworkPolicy admits the metrics port"
    );
    for sm in kind(docs, "ServiceMonitor") {
        assert!(
            labels_within(
                &sm["spec"]["selector"]["matchLabels"],
                &svc["metadata"]["labels"]
            ),
            "{what}: the ServiceMonitor selects no Service"
        );
        assert_eq!(
            sm["spec"]["endpoints"][0]["port"], svc_port["name"],
            "{what}"
        );
        assert_eq!(
            strs(&sm["spec"]["namespaceSelector"]["matchNames"]),
            [svc["metadata"]["namespace"].as_str().expect("namespace")],
            "{what}"
        );
    }

    // Everything in one namespace, which admits the pod.
    let ns = one(docs, "Namespace");
    let ns_name = &ns["metadata"]["name"];
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "{what}"
    );
    for d in docs.iter().filter(|d| d["kind"] != "Namespace") {
        assert_eq!(
            &d["metadata"]["namespace"], ns_name,
            "{what}: {}",
            d["kind"]
        );
    }
}

#[test]
fn objects_agree_with_the_unit_and_each_other() {
    let plain = yaml_docs(&[&plain_manifest(), &plain_servicemonitor()]);
    check_objects(&plain, "deploy/kubernetes");
    let tmp = TempDir::new("deploy-objects");
    let renders = write_renders(tmp.path());
    let all = yaml_docs(&[&renders[1]]);
    check_objects(&all, "the chart with ci/all-values.yaml");
    assert_eq!(
        one(&all, "DaemonSet")["spec"]["template"]["spec"]["priorityClassName"],
        "system-node-critical"
    );
}

#[test]
fn configmap_files_pass_the_daemons_checks() {
    let tmp = TempDir::new("deploy-config");
    let renders = write_renders(tmp.path());
    for (what, file) in [
        ("deploy/kubernetes", plain_manifest()),
        ("the chart with ci/all-values.yaml", renders[1].clone()),
    ] {
        let dir = tmp.path().join(format!("files-{}", rmm_tests::nonce()));
        std::fs::create_dir(&dir).expect("mkdir");
        let mut rules = Vec::new();
        let mut config = None;
        for cm in kind(&yaml_docs(&[&file]), "ConfigMap") {
            for (key, text) in cm["data"].as_object().into_iter().flatten() {
                let path = dir.join(key);
                std::fs::write(&path, text.as_str().expect("ConfigMap data is text"))
                    .expect("writing a ConfigMap file");
                if key == "config.toml" {
                    config = Some(path);
                } else if key.ends_with(".toml") {
                    rules.push(path);
                }
            }
        }
        let config = config.unwrap_or_else(|| panic!("{what}: no config.toml"));
        assert!(!rules.is_empty(), "{what}: no rules files");
        let bin = monitor_bin();
        let run = run_ok(&bin, &["config", "check", path_str(&config)]);
        println!("{what}: {}", run.stdout.trim());
        let mut args = vec!["rules", "check"];
        args.extend(rules.iter().map(|r| path_str(r)));
        let run = run_ok(&bin, &args);
        println!("{what}: {}", run.stdout.trim());
    }
}
