// Command etcd is the etcd server built from go.etcd.io/etcd/server/v3 as a Go module.
//
// Why a wrapper: etcd's own main package lives in the repository root module, which the
// module proxy serves without the server's replace directives resolved; etcdmain.Main is
// the same entry point that etcd's binary calls, so behaviour and flags are identical.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
