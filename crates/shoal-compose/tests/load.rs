//! Stack files in, project and stack out: every key of the format, interpolation, merging of
//! several files, anchors, errors with their place, and the plan of a deploy.

use std::collections::BTreeMap;

use shoal_api::v1::{mount, port_config, restart_policy, service_spec::Mode, update_config, ServiceSpec};
use shoal_compose::stack::{self, Current, Held, Step};
use shoal_compose::{load, Condition, Env, File, Loaded};

fn vars(name: &str) -> Option<String> {
    match name {
        "FROM_SHELL" => Some("shell".into()),
        "TAG" => None,
        _ => None,
    }
}

fn read(path: &str) -> Result<String, String> {
    match path {
        "web.env" => Ok("LEVEL=debug\nMODE=overridden-by-environment\n".into()),
        other => Err(format!("no such file {other}")),
    }
}

fn files(list: &[(&str, &str)]) -> Vec<File> {
    list.iter().map(|(n, t)| File { name: n.to_string(), text: t.to_string() }).collect()
}

fn load_with(list: &[(&str, &str)], var: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, String> {
    load(&files(list), &Env { var, read: &read }).map_err(|e| e.to_string())
}

fn load_ok(text: &str) -> Loaded {
    load_with(&[("stack.yml", text)], &vars).expect("loads")
}

fn load_err(text: &str) -> String {
    load_with(&[("stack.yml", text)], &vars).expect_err("refused")
}

fn every_key() -> Loaded {
    load_ok(include_str!("files/every-key.yml"))
}

fn container(s: &ServiceSpec) -> &shoal_api::v1::ContainerSpec {
    s.task_template.as_ref().and_then(|t| t.container.as_ref()).expect("container")
}

#[test]
fn every_service_key_reaches_the_spec() {
    let l = every_key();
    let web = &l.project.services["web"];
    let s = &web.spec;
    let c = container(s);
    assert_eq!(c.image, "registry:5000/busybox:1", "the default of an unset variable");
    assert_eq!(c.args, ["httpd", "-f", "-p", "80"]);
    assert_eq!(c.command, ["/bin/sh", "-c"]);
    assert_eq!(c.env, ["LEVEL=debug", "MODE=production", "FROM_SHELL=shell"], "env_file, then environment over it");
    assert_eq!(c.labels.get("team").map(String::as_str), Some("web"), "from the merge key");
    assert_eq!(c.stop_grace_period_ms, Some(20_000));
    assert_eq!(
        (c.stop_signal.as_str(), c.init, c.user.as_str(), c.dir.as_str(), c.hostname.as_str()),
        ("SIGQUIT", true, "1000:1001", "/srv", "web-host")
    );
    let ports = &s.endpoint_spec.as_ref().expect("endpoint").ports;
    let p: Vec<(u32, u32, i32, i32)> =
        ports.iter().map(|p| (p.published_port, p.target_port, p.protocol, p.publish_mode)).collect();
    let (tcp, udp) = (port_config::Protocol::Tcp as i32, port_config::Protocol::Udp as i32);
    let (ingress, host) = (port_config::PublishMode::Ingress as i32, port_config::PublishMode::Host as i32);
    assert_eq!(
        p,
        [(8080, 80, tcp, ingress), (8443, 443, tcp, host), (9000, 90, udp, ingress), (9001, 91, udp, ingress)]
    );
    let tt = s.task_template.as_ref().expect("tt");
    let nets: Vec<(&str, Vec<String>)> = tt.networks.iter().map(|n| (n.target.as_str(), n.aliases.clone())).collect();
    assert_eq!(nets, [("front", vec!["www".to_string()]), ("back", vec![])]);
    let m: Vec<(i32, &str, &str, bool)> =
        c.mounts.iter().map(|m| (m.r#type, m.source.as_str(), m.target.as_str(), m.read_only)).collect();
    assert_eq!(
        m,
        [
            (mount::Type::Volume as i32, "data", "/data", false),
            (mount::Type::Bind as i32, "/srv/static", "/static", true),
            (mount::Type::Tmpfs as i32, "", "/scratch", false)
        ]
    );
    assert_eq!(c.mounts[2].tmpfs_options.as_ref().map(|t| t.size_bytes), Some(64 << 20));
    assert_eq!(web.volumes, ["data"]);
    let sec: Vec<(&str, &str, &str, &str, u32)> = c
        .secrets
        .iter()
        .map(|r| {
            let t = r.target.as_ref().expect("target");
            (r.secret_name.as_str(), t.name.as_str(), t.uid.as_str(), t.gid.as_str(), t.mode)
        })
        .collect();
    assert_eq!(sec, [("db_password", "db_password", "0", "0", 0o444), ("api_key", "key.txt", "1000", "1001", 0o400)]);
    assert_eq!(c.configs[0].target.as_ref().map(|t| t.name.as_str()), Some("/etc/site.conf"));
    let h = c.healthcheck.as_ref().expect("healthcheck");
    assert_eq!(
        (h.test.len(), h.interval_ms, h.timeout_ms, h.retries, h.start_period_ms, h.start_interval_ms),
        (2, 5_000, 2_000, 4, 10_000, 1_000)
    );
    assert_eq!(
        web.depends_on.iter().map(|(n, c, _)| (n.as_str(), *c)).collect::<Vec<_>>(),
        [("db", Condition::Healthy)]
    );
    assert!(matches!(s.mode, Some(Mode::Replicated(ref r)) if r.replicas == 3));
    assert_eq!(
        s.annotations.as_ref().map(|a| a.labels.clone()),
        Some(BTreeMap::from([("tier".into(), "front".into())]))
    );
    let p = tt.placement.as_ref().expect("placement");
    assert_eq!(
        (p.constraints.clone(), p.preferences[0].spread.as_str(), p.max_replicas_per_node),
        (vec!["node.role==worker".to_string()], "node.labels.zone", 2)
    );
    let r = tt.resources.as_ref().expect("resources");
    let (lim, res) = (r.limits.as_ref().expect("limits"), r.reservations.as_ref().expect("reservations"));
    assert_eq!(
        (lim.nano_cpus, lim.memory_bytes, lim.pids, res.nano_cpus, res.memory_bytes),
        (500_000_000, 128 << 20, 100, 250_000_000, 64 << 20)
    );
    let rp = tt.restart_policy.as_ref().expect("restart");
    assert_eq!(
        (rp.condition(), rp.delay_ms, rp.max_attempts, rp.window_ms),
        (restart_policy::Condition::OnFailure, Some(3_000), 5, 60_000)
    );
    let u = s.update_config.as_ref().expect("update");
    assert_eq!(
        (u.parallelism, u.delay_ms, u.failure_action(), u.monitor_ms, u.order()),
        (2, 1_000, update_config::FailureAction::Rollback, Some(10_000), update_config::Order::StartFirst)
    );
    assert!((u.max_failure_ratio - 0.2).abs() < 1e-6);
    assert_eq!(s.rollback_config.as_ref().map(|r| r.parallelism), Some(0));
    let db = &l.project.services["db"].spec;
    assert!(matches!(db.mode, Some(Mode::Global(_))));
    assert_eq!(container(db).env, ["ROLE=primary"]);
    assert!(
        matches!(l.project.services["migrate"].spec.mode, Some(Mode::ReplicatedJob(ref j)) if j.total_completions == 4)
    );
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn top_level_objects() {
    let l = every_key();
    let n = &l.project.networks;
    assert!(n["front"].attachable && n["front"].subnet == "10.50.0.0/24" && !n["front"].external);
    assert!(n["back"].internal);
    assert!(n["shared"].external && n["shared"].name.as_deref() == Some("corp-net"));
    assert!(l.project.volumes.contains_key("data"));
    assert_eq!(l.project.secrets["db_password"].file.as_deref(), Some("./db_password.txt"));
    assert!(l.project.secrets["api_key"].external);
    assert_eq!(l.project.configs["site"].file.as_deref(), Some("site.conf"));
}

fn stack_of(l: &Loaded) -> stack::Desired {
    let read = |f: &str| -> Result<Vec<u8>, String> {
        match f {
            "./db_password.txt" => Ok(b"s3cret".to_vec()),
            "site.conf" => Ok(b"listen 80".to_vec()),
            other => Err(format!("no {other}")),
        }
    };
    stack::desired(&l.project, "app", &read).expect("stack")
}

#[test]
fn the_stack_names_labels_and_orders_its_objects() {
    let d = stack_of(&every_key());
    let names: Vec<&str> =
        d.services.iter().filter_map(|s| s.spec.annotations.as_ref()).map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["app_db", "app_migrate", "app_web"], "db before web, which depends on it");
    let web = &d.services[2];
    assert_eq!(web.depends_on, [("app_db".to_string(), Condition::Healthy)]);
    let a = web.spec.annotations.as_ref().expect("annotations");
    assert_eq!(a.labels.get(stack::NAMESPACE_LABEL).map(String::as_str), Some("app"));
    let tt = web.spec.task_template.as_ref().expect("tt");
    let nets: Vec<(&str, Vec<String>)> = tt.networks.iter().map(|n| (n.target.as_str(), n.aliases.clone())).collect();
    assert_eq!(
        nets,
        [("app_front", vec!["web".to_string(), "www".to_string()]), ("app_back", vec!["web".to_string()])]
    );
    let c = container(&web.spec);
    assert_eq!(c.labels.get(stack::NAMESPACE_LABEL).map(String::as_str), Some("app"));
    assert_eq!(c.mounts[0].source, "app_data");
    let secret = &c.secrets[0];
    assert!(
        secret.secret_name.starts_with("app_db_password-") && secret.secret_name.len() == "app_db_password-".len() + 8,
        "{secret:?}"
    );
    assert_eq!(secret.target.as_ref().map(|t| t.name.as_str()), Some("db_password"), "the file keeps its plain name");
    assert_eq!(c.secrets[1].secret_name, "api_key", "external: its own name");
    let nets: Vec<&str> = d.networks.iter().filter_map(|n| n.annotations.as_ref()).map(|a| a.name.as_str()).collect();
    assert_eq!(nets, ["app_back", "app_front", "app_default"], "migrate names no network: the default one");
    assert_eq!(d.external_networks, ["corp-net"]);
    assert_eq!(d.external_secrets, ["api_key"]);
    assert_eq!(d.secrets.len(), 1);
    assert_eq!(d.secrets[0].data, b"s3cret");
}

#[test]
fn a_changed_secret_file_is_a_new_secret() {
    let l = every_key();
    let a = stack_of(&l);
    let b = stack::desired(&l.project, "app", &|f: &str| {
        Ok(if f == "site.conf" { b"listen 80".to_vec() } else { b"other".to_vec() })
    })
    .expect("stack");
    assert_ne!(a.secrets[0].annotations, b.secrets[0].annotations);
    assert_eq!(a.configs[0].annotations, b.configs[0].annotations);
}

fn current_of(d: &stack::Desired) -> Current {
    Current {
        services: d
            .services
            .iter()
            .map(|s| Held {
                name: s.spec.annotations.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
                spec: Some(s.spec.clone()),
            })
            .collect(),
        networks: d.networks.iter().filter_map(|n| n.annotations.as_ref()).map(|a| a.name.clone()).collect(),
        secrets: d.secrets.iter().filter_map(|n| n.annotations.as_ref()).map(|a| a.name.clone()).collect(),
        configs: d.configs.iter().filter_map(|n| n.annotations.as_ref()).map(|a| a.name.clone()).collect(),
    }
}

#[test]
fn a_redeploy_changes_only_what_differs_and_prune_removes_the_rest() {
    let d = stack_of(&every_key());
    let fresh = stack::plan(&d, &Current::default(), false);
    let described: Vec<String> = fresh.iter().map(Step::describe).collect();
    assert_eq!(described[..3], ["create network app_back", "create network app_front", "create network app_default"]);
    assert!(described.contains(&"create service app_web".to_string()));
    assert_eq!(stack::plan(&d, &current_of(&d), true), Vec::<Step>::new(), "the same file: nothing to do");

    // One service changed, one gone from the file, an old secret version and a stray network.
    let mut next = d.clone();
    if let Some(c) = next.services[0].spec.task_template.as_mut().and_then(|t| t.container.as_mut()) {
        c.env.push("NEW=1".into());
    }
    next.services.retain(|s| s.spec.annotations.as_ref().is_some_and(|a| a.name != "app_migrate"));
    let mut current = current_of(&d);
    current.secrets.push("app_db_password-00000000".into());
    current.networks.push("app_old".into());
    let steps: Vec<String> = stack::plan(&next, &current, false).iter().map(Step::describe).collect();
    assert_eq!(
        steps,
        ["update service app_db", "remove secret app_db_password-00000000"],
        "without --prune only the old secret version goes"
    );
    let steps: Vec<String> = stack::plan(&next, &current, true).iter().map(Step::describe).collect();
    assert_eq!(
        steps,
        [
            "update service app_db",
            "remove service app_migrate",
            "remove secret app_db_password-00000000",
            "remove network app_old"
        ]
    );
}

#[test]
fn a_stored_spec_compares_equal_once_made_comparable() {
    let d = stack_of(&load_ok(
        "services:\n  web:\n    image: img\n    ports: [\"80\"]\n    secrets: [s]\nsecrets:\n  s: {external: true}\n",
    ));
    let want = &d.services[0].spec;
    let mut stored = want.clone();
    let tt = stored.task_template.as_mut().expect("tt");
    tt.networks[0].target = "n1d".into();
    if let Some(c) = tt.container.as_mut() {
        c.secrets[0].secret_id = "s1d".into();
    }
    if let Some(e) = stored.endpoint_spec.as_mut() {
        e.ports[0].published_port = 30001;
    }
    assert_ne!(&stored, want);
    let names = |id: &str| (id == "n1d").then(|| "app_default".to_string());
    assert_eq!(&stack::comparable(&stored, want, &names), want);
}

#[test]
fn several_files_merge_by_service_name() {
    let base = "services:\n  web:\n    image: img:1\n    environment: [A=1, B=2]\n    ports: [\"80:80\"]\n    command: [a, b]\n    deploy: {replicas: 2, labels: [x=1]}\n";
    let over = "services:\n  web:\n    image: img:2\n    environment: {B: three}\n    ports: [\"443:443\"]\n    command: [c]\n    deploy: {labels: {y: \"2\"}}\n  extra:\n    image: other\n";
    let l = load_with(&[("a.yml", base), ("b.yml", over)], &vars).expect("loads");
    let web = &l.project.services["web"].spec;
    let c = container(web);
    assert_eq!(
        (c.image.as_str(), c.args.clone()),
        ("img:2", vec!["c".to_string()]),
        "single values and plain lists: the later file's"
    );
    assert_eq!(c.env, ["A=1", "B=three"], "keyed lists merge by key");
    assert_eq!(web.endpoint_spec.as_ref().map(|e| e.ports.len()), Some(2), "ports add up");
    assert!(matches!(web.mode, Some(Mode::Replicated(ref r)) if r.replicas == 2));
    let labels = web.annotations.as_ref().map(|a| a.labels.clone()).unwrap_or_default();
    assert_eq!(labels.len(), 2, "{labels:?}");
    assert!(l.project.services.contains_key("extra"));
}

#[test]
fn errors_point_at_the_file() {
    let cases: &[(&str, &str)] = &[
        ("services:\n  web:\n    image: img\n    imagee: x\n", "stack.yml:4:13: unknown key \"imagee\" in service \"web\""),
        ("services:\n  web:\n    image: img\n    deploy:\n      replicas: many\n", "stack.yml:5:17: replicas must be a whole number"),
        ("services:\n  web:\n    image: img\n    ports: 80\n", "stack.yml:4:12: ports must be a list"),
        ("services:\n  web:\n    image: ${IMG?set IMG to the image}\n", "stack.yml:3:12: required variable IMG is not set: set IMG to the image"),
        ("services:\n  web:\n    environment: [A=1]\n", "stack.yml:3:5: service \"web\" has no image"),
        ("services:\n  web:\n    image: img\n    networks: [nope]\n", "service \"web\" joins network \"nope\""),
        ("services:\n  web:\n    image: img\n    depends_on: [db]\n", "stack.yml:4:18: service \"web\" depends on \"db\""),
        ("services:\n  web:\n    image: img\n    deploy:\n      mode: global\n      replicas: 2\n", "takes no replicas"),
        ("services:\n  web:\n    image: img\n    deploy:\n      mode: replicated-job\n      update_config: {parallelism: 2}\n", "a job takes no update_config"),
        ("services:\n  web:\n    image: img\n    volumes: [\"rel/path:/x\"]\n", "mounts volume \"rel/path\""),
        ("services:\n  web.1:\n    image: img\n", "stack.yml:3:5: service name \"web.1\""),
        ("servics:\n  web: {}\n", "stack.yml:2:3: unknown top-level key \"servics\""),
        ("services:\n  web:\n    image: img\n    healthcheck:\n      test: [BAD]\n", "stack.yml:5:13: healthcheck test must be"),
        ("services:\n  web:\n    image: img\n    deploy:\n      restart_policy: {condition: sometimes}\n", "restart condition \"sometimes\""),
        ("secrets:\n  s: {}\n", "stack.yml:2:6: secret \"s\" needs either file or external: true"),
        ("services:\n  a: {image: i, depends_on: [b]}\n  b: {image: i, depends_on: [a]}\n", "depends_on makes a cycle among"),
        ("services:\n  web:\n    image: img\n    env_file: missing.env\n", "stack.yml:4:15: env_file \"missing.env\": no such file missing.env"),
        ("a: [1,\n", "stack.yml:"),
    ];
    for (text, want) in cases {
        let got = match load_with(&[("stack.yml", text)], &vars) {
            Err(e) => e,
            Ok(l) => match stack::desired(&l.project, "app", &|_| Ok(Vec::new())) {
                Err(e) => e.to_string(),
                Ok(_) => format!("accepted: {text}"),
            },
        };
        assert!(got.contains(want), "{text}\nwant {want}\ngot  {got}");
    }
}

#[test]
fn keys_swarm_ignores_are_warned_about_once_per_service() {
    let l = load_ok("services:\n  web:\n    image: img\n    build: .\n    restart: always\n    privileged: true\n    x-note: kept\n");
    assert_eq!(
        l.warnings,
        ["stack.yml:3:5: service \"web\": ignoring build, restart, privileged (not supported by swarm-style stacks)"]
    );
}

#[test]
fn the_short_forms() {
    let l = load_ok(
        "services:\n  web:\n    image: img\n    command: sh -c 'echo \"hi there\"'\n    healthcheck:\n      test: wget -q localhost\n    depends_on: [db]\n    secrets: [s]\n  db:\n    image: img\n    healthcheck:\n      disable: true\nsecrets:\n  s: {external: true, name: shared}\n",
    );
    let c = container(&l.project.services["web"].spec);
    assert_eq!(c.args, ["sh", "-c", "echo \"hi there\""]);
    assert_eq!(
        c.healthcheck.as_ref().map(|h| h.test.clone()),
        Some(vec!["CMD-SHELL".to_string(), "wget -q localhost".to_string()])
    );
    assert_eq!(
        container(&l.project.services["db"].spec).healthcheck.as_ref().map(|h| h.test.clone()),
        Some(vec!["NONE".to_string()])
    );
    assert_eq!(l.project.secrets["s"].name.as_deref(), Some("shared"));
    let _ = load_err;
}

#[test]
fn the_specification_example() {
    let l = load_ok(include_str!("files/spec-example.yml"));
    let d = stack::desired(&l.project, "demo", &|_| Err("no files".into())).expect("stack");
    let names: Vec<&str> =
        d.services.iter().filter_map(|s| s.spec.annotations.as_ref()).map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["demo_backend", "demo_frontend"]);
    let nets: Vec<&str> = d.networks.iter().filter_map(|n| n.annotations.as_ref()).map(|a| a.name.as_str()).collect();
    assert_eq!(nets, ["demo_back-tier", "demo_front-tier"], "no default network: every service names one");
    assert_eq!(
        (d.external_configs.clone(), d.external_secrets.clone()),
        (vec!["httpd-config".to_string()], vec!["server-certificate".to_string()])
    );
    let front = container(&d.services[1].spec);
    assert_eq!(
        front.configs[0].target.as_ref().map(|t| t.name.as_str()),
        Some("/httpd-config"),
        "a config's default target"
    );
    assert_eq!(front.secrets[0].target.as_ref().map(|t| t.name.as_str()), Some("server-certificate"));
    assert_eq!(container(&d.services[0].spec).mounts[0].source, "demo_db-data");
    let ports = &d.services[1].spec.endpoint_spec.as_ref().expect("ports").ports;
    assert_eq!((ports[0].published_port, ports[0].target_port), (443, 8043));
}
