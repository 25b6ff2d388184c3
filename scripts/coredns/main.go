// Command coredns is CoreDNS built from github.com/coredns/coredns as a Go module, with only
// the plugins the one-node cluster's DNS needs (tests/harness/node.py runs it on the host).
//
// Why a wrapper: CoreDNS's own main package imports core/plugin, which pulls in every plugin
// (Route 53, Azure, Google Cloud DNS, etcd, ...) and their SDKs; compiling those takes many
// minutes on a small CI machine for nothing. coremain.Run is the entry point CoreDNS's binary
// calls, so flags and Corefile semantics are identical; unused directives simply stay
// unregistered (a Corefile naming one fails to load with a clear error).
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
