// kind-config-check loads a kind cluster configuration with kind's own loader and
// validation, the code `kind create cluster --config FILE` runs before it touches a
// container runtime, and prints the nodes and their port mappings as JSON for
// scripts/check-chart.sh. scripts/tools/packaging.sh builds it inside a copy of
// kind's pinned module, the only place kind's internal config packages import from.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"sigs.k8s.io/kind/pkg/internal/apis/config/encoding"
)

type portMapping struct {
	ContainerPort int32  `json:"containerPort"`
	HostPort      int32  `json:"hostPort"`
	ListenAddress string `json:"listenAddress"`
	Protocol      string `json:"protocol"`
}

type node struct {
	Role  string        `json:"role"`
	Ports []portMapping `json:"ports"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kind-config-check FILE")
		os.Exit(2)
	}
	path := os.Args[1]
	cfg, err := encoding.Load(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
		os.Exit(1)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: invalid kind configuration: %v\n", path, err)
		os.Exit(1)
	}
	out := struct {
		Name  string `json:"name"`
		Nodes []node `json:"nodes"`
	}{Name: cfg.Name}
	for _, n := range cfg.Nodes {
		ports := []portMapping{}
		for _, p := range n.ExtraPortMappings {
			ports = append(ports, portMapping{p.ContainerPort, p.HostPort, p.ListenAddress, string(p.Protocol)})
		}
		out.Nodes = append(out.Nodes, node{Role: string(n.Role), Ports: ports})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
