#!/usr/bin/env python3
"""Writes node-agent.json and dns.json: list/watch exchanges in the shape an API server
sends them (list bodies without item kinds, watch bodies as JSON lines, Status errors,
bookmarks, paging). No API server runs here, so they are written, not captured; edit
this script and rerun it to change them. node-agent.final.yaml is written by hand."""
import os
HERE = os.path.dirname(os.path.abspath(__file__))
import json
UID=[0]
def meta(name, rv, ns=None, **kw):
    UID[0]+=1
    m={"name":name,"uid":"5d1c%04d-7a1e-4c6b-9f0e-3b2a1c0d%04d"%(UID[0],UID[0]),"resourceVersion":str(rv),"creationTimestamp":"2026-11-20T08:%02d:00Z"%(UID[0]%60)}
    if ns: m["namespace"]=ns
    m.update(kw); return m
def status(code, reason, message):
    return {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":message,"reason":reason,"code":code}
def lst(kind, api, rv, items):
    return {"kind":kind,"apiVersion":api,"metadata":{"resourceVersion":str(rv)},"items":items}
def ev(t, o): return {"type":t,"object":o}
def bookmark(kind, api, rv):
    return ev("BOOKMARK", {"kind":kind,"apiVersion":api,"metadata":{"resourceVersion":str(rv)}})
LISTQ="limit=500"
def watchq(rv, extra=""): return f"{extra}watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={rv}"
X=[]
def ex(path, q, status_code, body=None, watch=None):
    e={"request":f"GET {path}?{q}","status":status_code}
    if watch is not None: e["watch"]=watch
    else: e["body"]=body
    X.append(e)

# Namespaces: a bookmark moves the resume point.
def ns(name, rv, labels=None):
    m=meta(name, rv, labels={"kubernetes.io/metadata.name":name, **(labels or {})})
    return {"kind":"Namespace","apiVersion":"v1","metadata":m,"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}}
P="/api/v1/namespaces"
ex(P,LISTQ,200,lst("NamespaceList","v1",1000,[{k:v for k,v in ns(n,rv).items() if k not in("kind","apiVersion")} for n,rv in [("default",11),("kube-system",12),("shop",300)]]))
ex(P,watchq(1000),200,watch=[bookmark("Namespace","v1",1040)])
ex(P,watchq(1040),200,watch=[ev("ADDED",ns("staging",1050,{"env":"staging"}))])

# Nodes: a heartbeat-only update (dropped), then a cordon.
def node(name, rv, cidr, ip, unsched=False, hb="2026-11-23T08:00:00Z"):
    spec={"podCIDR":cidr,"podCIDRs":[cidr]}
    if unsched: spec["unschedulable"]=True
    return {"kind":"Node","apiVersion":"v1","metadata":meta(name,rv,labels={"kubernetes.io/hostname":name,"kubernetes.io/os":"linux"}),
            "spec":spec,"status":{"addresses":[{"type":"InternalIP","address":ip},{"type":"Hostname","address":name}],
            "conditions":[{"type":"Ready","status":"True","lastHeartbeatTime":hb,"lastTransitionTime":"2026-11-20T08:00:00Z","reason":"KubeletReady","message":"kubelet is posting ready status"}]}}
def strip(o): return {k:v for k,v in o.items() if k not in("kind","apiVersion")}
P="/api/v1/nodes"
ex(P,LISTQ,200,lst("NodeList","v1",1000,[strip(node("node-a",900,"10.244.0.0/24","192.168.56.10")),strip(node("node-b",901,"10.244.1.0/24","192.168.56.11"))]))
ex(P,watchq(1000),200,watch=[ev("MODIFIED",node("node-b",1061,"10.244.1.0/24","192.168.56.11",hb="2026-11-23T08:00:40Z")),
                             ev("MODIFIED",node("node-b",1062,"10.244.1.0/24","192.168.56.11",unsched=True,hb="2026-11-23T08:00:40Z"))])

# Pods on node-a: the first list fails (error then recovery).
def pod(name, rv, ip=None, phase="Pending", ready=False):
    st={"phase":phase,"hostIP":"192.168.56.10","hostIPs":[{"ip":"192.168.56.10"}],
        "conditions":[{"type":"Ready","status":"True" if ready else "False","lastTransitionTime":"2026-11-23T08:01:00Z"}]}
    if ip: st["podIP"]=ip; st["podIPs"]=[{"ip":ip}]
    return {"kind":"Pod","apiVersion":"v1","metadata":meta(name,rv,"shop",labels={"app":"web"},
             ownerReferences=[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d4b9c","uid":"8e0f0000-0000-4000-8000-000000000001","controller":True,"blockOwnerDeletion":True}]),
            "spec":{"nodeName":"node-a","containers":[{"name":"web","image":"nginx:1.27","ports":[{"name":"http","containerPort":8080,"protocol":"TCP"}]}],
                    "restartPolicy":"Always","dnsPolicy":"ClusterFirst","serviceAccountName":"default"},"status":st}
P="/api/v1/pods"
PQ="fieldSelector=spec.nodeName%3Dnode-a&"
ex(P,PQ+LISTQ,500,status(500,"InternalError","etcdserver: request timed out"))
ex(P,PQ+LISTQ,200,lst("PodList","v1",1000,[strip(pod("web-1",950,"10.244.0.5","Running",True))]))
ex(P,watchq(1000,PQ),200,watch=[ev("ADDED",pod("web-2",1070)),ev("MODIFIED",pod("web-2",1071,"10.244.0.6","Running",True)),
                                ev("DELETED",pod("web-1",1072,"10.244.0.5","Running",True))])

# Services: an update, then 410 Gone; the relist misses a deletion and an addition.
def svc(ns_, name, rv, ip, ports, sel=None):
    spec={"type":"ClusterIP","clusterIP":ip,"clusterIPs":[ip],"ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack",
          "sessionAffinity":"None","internalTrafficPolicy":"Cluster","ports":ports}
    if sel: spec["selector"]=sel
    return {"kind":"Service","apiVersion":"v1","metadata":meta(name,rv,ns_),"spec":spec,"status":{"loadBalancer":{}}}
def port(name, p, tp, proto="TCP"):
    d={"protocol":proto,"port":p,"targetPort":tp}
    if name: d["name"]=name
    return d
kubernetes=svc("default","kubernetes",20,"10.96.0.1",[port("https",443,6443)])
dns=svc("kube-system","kube-dns",230,"10.96.0.10",[port("dns",53,53,"UDP"),port("dns-tcp",53,53)],{"k8s-app":"kube-dns"})
web=svc("shop","web",310,"10.96.100.1",[port("http",80,8080)],{"app":"web"})
legacy=svc("shop","legacy",320,"10.96.100.9",[port("http",80,8080)],{"app":"legacy"})
web2=svc("shop","web",1080,"10.96.100.1",[port("http",80,"http")],{"app":"web"})
api=svc("shop","api",1085,"10.96.100.2",[port("grpc",9000,9000)],{"app":"api"})
P="/api/v1/services"
ex(P,LISTQ,200,lst("ServiceList","v1",1000,[strip(x) for x in (kubernetes,dns,web,legacy)]))
ex(P,watchq(1000),200,watch=[ev("MODIFIED",web2),ev("ERROR",status(410,"Expired","too old resource version: 1000 (1090)"))])
ex(P,LISTQ,200,lst("ServiceList","v1",1100,[strip(x) for x in (kubernetes,dns,web2,api)]))
ex(P,watchq(1100),200,watch=[bookmark("Service","v1",1110)])

# EndpointSlices: a non-410 error event mid-watch (the watch goes on), then an update.
def slice_(ns_, name, rv, svcname, eps, ports):
    return {"kind":"EndpointSlice","apiVersion":"discovery.k8s.io/v1","metadata":meta(name,rv,ns_,labels={"kubernetes.io/service-name":svcname,"endpointslice.kubernetes.io/managed-by":"endpointslice-controller.k8s.io"}),
            "addressType":"IPv4","endpoints":eps,"ports":ports}
def ep(ip, node=None, pod=None):
    e={"addresses":[ip],"conditions":{"ready":True,"serving":True,"terminating":False}}
    if node: e["nodeName"]=node
    if pod: e["targetRef"]={"kind":"Pod","namespace":"shop","name":pod,"uid":"00000000-0000-4000-8000-0000000000%02d"%len(pod)}
    return e
P="/apis/discovery.k8s.io/v1/endpointslices"
s_k=slice_("default","kubernetes",21,"kubernetes",[ep("192.168.56.10")],[{"name":"https","port":6443,"protocol":"TCP"}])
s_d=slice_("kube-system","kube-dns-abcde",240,"kube-dns",[ep("10.244.1.3","node-b")],[{"name":"dns","port":53,"protocol":"UDP"},{"name":"dns-tcp","port":53,"protocol":"TCP"}])
s_w=slice_("shop","web-x1y2z",960,"web",[ep("10.244.0.5","node-a","web-1")],[{"name":"http","port":8080,"protocol":"TCP"}])
s_w2=slice_("shop","web-x1y2z",1090,"web",[ep("10.244.0.6","node-a","web-2")],[{"name":"http","port":8080,"protocol":"TCP"}])
ex(P,LISTQ,200,lst("EndpointSliceList","discovery.k8s.io/v1",1000,[strip(x) for x in (s_k,s_d,s_w)]))
ex(P,watchq(1000),200,watch=[ev("ERROR",status(500,"InternalError","etcd leader changed")),ev("MODIFIED",s_w2)])

# NetworkPolicies: an empty list, then one added.
P="/apis/networking.k8s.io/v1/networkpolicies"
ex(P,LISTQ,200,lst("NetworkPolicyList","networking.k8s.io/v1",1000,[]))
ex(P,watchq(1000),200,watch=[ev("ADDED",{"kind":"NetworkPolicy","apiVersion":"networking.k8s.io/v1","metadata":meta("default-deny",1095,"shop"),
                                         "spec":{"podSelector":{},"policyTypes":["Ingress"]}})])

# ServiceCIDRs (1.33+): the API server's default one, from --service-cluster-ip-range.
P="/apis/networking.k8s.io/v1/servicecidrs"
ex(P,LISTQ,200,lst("ServiceCIDRList","networking.k8s.io/v1",1000,[{"metadata":meta("kubernetes",20),"spec":{"cidrs":["10.96.0.0/12"]},
    "status":{"conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2026-11-20T08:00:00Z","reason":"","message":"Kubernetes Service CIDR is ready"}]}}]))

# ClusterNetworkPolicies (the sigs.k8s.io/network-policy-api CRD): one Admin policy.
P="/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies"
ex(P,LISTQ,200,lst("ClusterNetworkPolicyList","policy.networking.k8s.io/v1alpha2",1000,[{"metadata":meta("no-guests",30),
    "spec":{"tier":"Admin","priority":10,"subject":{"namespaces":{"matchLabels":{"kubernetes.io/metadata.name":"shop"}}},
            "ingress":[{"name":"deny-guests","action":"Deny","from":[{"namespaces":{"matchLabels":{"kind":"guest"}}}]}]}}]))

out={"description":"One node agent's list+watch exchanges on node-a, as an API server sends them: a bookmark, a failed list then recovery, 410 Gone mid-watch then a relist that missed a deletion, a non-410 error event, updates that change nothing modelled, the default ServiceCIDR, one ClusterNetworkPolicy.",
     "node":"node-a","exchanges":X}
json.dump(out, open(os.path.join(HERE, "node-agent.json"),"w"), indent=1)

# ---- dns.json: what cluster DNS watches; every Pod (no field selector), a paged list.
X=[]
P="/api/v1/namespaces"
ex(P,LISTQ,200,lst("NamespaceList","v1",2000,[strip(ns(n,rv)) for n,rv in [("default",11),("kube-system",12),("shop",300)]]))
ex(P,watchq(2000),200,watch=[bookmark("Namespace","v1",2001)])
P="/api/v1/pods"
p1=pod("web-1",950,"10.244.0.5","Running",True)
p3=pod("web-3",951,"10.244.1.7","Running",True); p3["spec"]["nodeName"]="node-b"; p3["status"]["hostIP"]="192.168.56.11"; p3["status"]["hostIPs"]=[{"ip":"192.168.56.11"}]
page1=lst("PodList","v1",2000,[strip(p1)]); page1["metadata"]["continue"]="eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MjAwMCwic3RhcnQiOiJzaG9wL3dlYi0xXHUwMDAwIn0"; page1["metadata"]["remainingItemCount"]=1
ex(P,LISTQ,200,page1)
ex(P,LISTQ+"&continue="+page1["metadata"]["continue"],200,lst("PodList","v1",2000,[strip(p3)]))
ex(P,watchq(2000),200,watch=[bookmark("Pod","v1",2002)])
P="/api/v1/services"
ex(P,LISTQ,200,lst("ServiceList","v1",2000,[strip(x) for x in (kubernetes,dns,web)]))
ex(P,watchq(2000),200,watch=[bookmark("Service","v1",2003)])
P="/apis/discovery.k8s.io/v1/endpointslices"
s_w3=slice_("shop","web-x1y2z",1990,"web",[ep("10.244.0.5","node-a","web-1"),ep("10.244.1.7","node-b","web-3")],[{"name":"http","port":8080,"protocol":"TCP"}])
ex(P,LISTQ,200,lst("EndpointSliceList","discovery.k8s.io/v1",2000,[strip(x) for x in (s_k,s_d,s_w3)]))
ex(P,watchq(2000),200,watch=[bookmark("EndpointSlice","discovery.k8s.io/v1",2004)])
out={"description":"Cluster DNS's list+watch exchanges: every Pod (no field selector) in two pages, no Nodes or NetworkPolicies.",
     "exchanges":X}
json.dump(out, open(os.path.join(HERE, "dns.json"),"w"), indent=1)
