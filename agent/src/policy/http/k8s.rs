//! Kubernetes API servers: the request path and method say the verb,
//! resource and namespace (as the API server's own `RequestInfo` reads
//! them), so rules can say `k8s = { verbs = ["get", "list"], resources =
//! ["pods"], namespaces = ["prod"] }`. A subresource is named with its
//! resource, as RBAC does: `pods/exec`, `pods/log`. Pure: parsed from the
//! already normalised path.

/// What a Kubernetes resource request does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sRequest {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: &'static str,
    /// `pods`, or `pods/exec` for a subresource.
    pub resource: String,
    /// `None` for cluster-scoped requests (and lists across namespaces).
    pub namespace: Option<String>,
}

/// The verbs a rule may name.
pub const VERBS: [&str; 8] = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"];

/// Reads a resource request; `None` for anything else (discovery such as
/// `/api/v1`, `/version`, or a path outside the API).
pub fn parse(method: &str, path: &str, query: &[(String, String)]) -> Option<K8sRequest> {
    // The API server trims slashes at both ends before reading the path.
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut rest: &[&str] = match segs.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return None,
    };
    // As Go's strconv.ParseBool reads it.
    let mut watch =
        query.iter().any(|(k, v)| k == "watch" && matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"));
    if let ["watch", more @ ..] = rest {
        watch = true;
        rest = more;
    }
    let mut namespace = None;
    if let ["namespaces", ns, more @ ..] = rest
        && !matches!(more.first(), None | Some(&"status" | &"finalize"))
    {
        namespace = Some((*ns).to_owned());
        rest = more;
    }
    let (resource, name, sub) = match rest {
        [] | [""] => return None,
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub, ..] => (*resource, Some(*name), Some(*sub)),
    };
    if resource.is_empty() || name.is_some_and(str::is_empty) {
        return None;
    }
    // The namespace object itself is in no namespace.
    let namespace = if resource == "namespaces" { None } else { namespace };
    let verb = match method.to_ascii_uppercase().as_str() {
        "GET" | "HEAD" if watch => "watch",
        "GET" | "HEAD" if name.is_some() => "get",
        "GET" | "HEAD" => "list",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if name.is_some() => "delete",
        "DELETE" => "deletecollection",
        _ => return None,
    };
    let resource = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_owned(),
    };
    Some(K8sRequest { verb, resource, namespace })
}

/// Discovery that clients such as kubectl read before anything else:
/// admitted (GET/HEAD only) by rules with `k8s` conditions.
pub fn is_discovery(method: &str, path: &str) -> bool {
    if !matches!(method, "GET" | "HEAD") {
        return false;
    }
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    matches!(
        segs.as_slice(),
        ["api"] | ["api", _] | ["apis"] | ["apis", _] | ["apis", _, _] | ["version"] | ["openapi", ..]
    )
}

/// A rule's `k8s` conditions. Empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K8sScope {
    pub verbs: Vec<String>,
    pub resources: Vec<String>,
    pub namespaces: Vec<String>,
}

impl K8sScope {
    /// Allow rules: why the request is not in the scope, if it is not.
    pub fn refuses(&self, method: &str, path: &str, query: &[(String, String)]) -> Option<String> {
        let Some(k) = parse(method, path, query) else {
            return (!is_discovery(method, path))
                .then(|| format!("{method} {path} is not a Kubernetes resource request (nor API discovery)"));
        };
        if !self.verbs.is_empty() && !self.verbs.iter().any(|v| v == k.verb) {
            return Some(format!("Kubernetes verb {} is not in its verbs [{}]", k.verb, self.verbs.join(", ")));
        }
        if !self.resources.is_empty() && !self.resources.iter().any(|r| r == "*" || *r == k.resource) {
            return Some(format!("resource {} is not in its resources [{}]", k.resource, self.resources.join(", ")));
        }
        if !self.namespaces.is_empty() {
            match &k.namespace {
                None => return Some(format!("{} {} is not in a namespace", k.verb, k.resource)),
                Some(ns) if !self.namespaces.iter().any(|n| n == "*" || n == ns) => {
                    return Some(format!("namespace {ns} is not in its namespaces [{}]", self.namespaces.join(", ")));
                }
                Some(_) => {}
            }
        }
        None
    }

    /// Deny rules: whether the request is one the rule denies (every
    /// condition given matches, compared case-insensitively).
    pub fn deny_matches(&self, method: &str, path: &str, query: &[(String, String)]) -> bool {
        let Some(k) = parse(method, path, query) else { return false };
        let any =
            |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == "*" || x.eq_ignore_ascii_case(v));
        any(&self.verbs, k.verb)
            && (self.resources.is_empty()
                || self.resources.iter().any(|r| {
                    // Denying `pods` denies its subresources too.
                    r == "*"
                        || r.eq_ignore_ascii_case(&k.resource)
                        || k.resource.split('/').next().is_some_and(|base| r.eq_ignore_ascii_case(base))
                }))
            && (self.namespaces.is_empty() || k.namespace.as_deref().is_some_and(|ns| any(&self.namespaces, ns)))
    }

    pub fn describe(&self) -> String {
        let list = |l: &[String], what: &str| if l.is_empty() { format!("any {what}") } else { l.join(", ") };
        format!(
            "k8s {} on {} in {}",
            list(&self.verbs, "verb"),
            list(&self.resources, "resource"),
            list(&self.namespaces, "namespace")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(method: &str, path: &str) -> Option<K8sRequest> {
        let (path, q) = path.split_once('?').unwrap_or((path, ""));
        parse(method, path, &crate::policy::http::parse_query(q).unwrap())
    }

    fn k(verb: &'static str, resource: &str, ns: Option<&str>) -> Option<K8sRequest> {
        Some(K8sRequest { verb, resource: resource.into(), namespace: ns.map(Into::into) })
    }

    #[test]
    fn paths_read_as_the_api_server_reads_them() {
        assert_eq!(p("GET", "/api/v1/namespaces/prod/pods"), k("list", "pods", Some("prod")));
        assert_eq!(p("GET", "/api/v1/namespaces/prod/pods/web-1"), k("get", "pods", Some("prod")));
        assert_eq!(p("GET", "/api/v1/namespaces/prod/pods?watch=true"), k("watch", "pods", Some("prod")));
        assert_eq!(p("GET", "/api/v1/watch/namespaces/prod/pods"), k("watch", "pods", Some("prod")));
        assert_eq!(p("POST", "/api/v1/namespaces/prod/pods/web-1/exec"), k("create", "pods/exec", Some("prod")));
        assert_eq!(p("GET", "/api/v1/namespaces/prod/pods/web-1/log"), k("get", "pods/log", Some("prod")));
        assert_eq!(
            p("DELETE", "/apis/apps/v1/namespaces/prod/deployments"),
            k("deletecollection", "deployments", Some("prod"))
        );
        assert_eq!(
            p("PATCH", "/apis/apps/v1/namespaces/prod/deployments/api"),
            k("patch", "deployments", Some("prod"))
        );
        assert_eq!(p("GET", "/api/v1/pods"), k("list", "pods", None));
        assert_eq!(p("GET", "/api/v1/namespaces/prod/secrets/"), k("list", "secrets", Some("prod")), "trailing slash");
        assert_eq!(p("GET", "/api/v1/namespaces/prod/pods?watch=True"), k("watch", "pods", Some("prod")));
        assert_eq!(p("GET", "/api/v1/nodes/n1"), k("get", "nodes", None));
        assert_eq!(p("GET", "/api/v1/namespaces/prod"), k("get", "namespaces", None));
        assert_eq!(p("PUT", "/api/v1/namespaces/prod/finalize"), k("update", "namespaces/finalize", None));
        for discovery in ["/api", "/api/v1", "/apis", "/apis/apps/v1", "/version", "/openapi/v2"] {
            assert_eq!(p("GET", discovery), None, "{discovery}");
            assert!(is_discovery("GET", discovery), "{discovery}");
        }
        assert!(!is_discovery("GET", "/logs/kube-apiserver.log"));
        assert!(!is_discovery("POST", "/api/v1"));
    }

    #[test]
    fn scopes_allow_and_deny() {
        let s = K8sScope {
            verbs: vec!["get".into(), "list".into()],
            resources: vec!["pods".into()],
            namespaces: vec!["prod".into()],
        };
        let q = [];
        assert_eq!(s.refuses("GET", "/api/v1/namespaces/prod/pods", &q), None);
        assert_eq!(s.refuses("GET", "/api", &q), None, "discovery");
        assert!(s.refuses("GET", "/api/v1/namespaces/dev/pods", &q).unwrap().contains("namespace dev"));
        assert!(s.refuses("DELETE", "/api/v1/namespaces/prod/pods/x", &q).unwrap().contains("verb delete"));
        assert!(s.refuses("GET", "/api/v1/namespaces/prod/secrets", &q).unwrap().contains("secrets"));
        assert!(s.refuses("GET", "/api/v1/namespaces/prod/pods/x/log", &q).unwrap().contains("pods/log"));
        assert!(s.refuses("GET", "/api/v1/pods", &q).unwrap().contains("not in a namespace"));
        assert!(s.refuses("GET", "/logs/x", &q).is_some());
        let d = K8sScope { resources: vec!["Secrets".into(), "pods".into()], ..K8sScope::default() };
        assert!(d.deny_matches("GET", "/api/v1/namespaces/prod/secrets/db", &q));
        assert!(d.deny_matches("POST", "/api/v1/namespaces/prod/pods/x/exec", &q), "a resource's subresources");
        assert!(!d.deny_matches("GET", "/api/v1/namespaces/prod/configmaps", &q));
        assert!(!d.deny_matches("GET", "/version", &q));
    }
}
