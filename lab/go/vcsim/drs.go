package main

// Model: clusters honour drsConfig.enabled, and a placement that needs DRS is refused without it.
//
// vSphere API reference, ClusterDrsConfigInfo.enabled: "Flag indicating whether or not DRS
// service is enabled." ReconfigureComputeResource_Task, modify: "Flag to specify whether the
// specification ("spec") should be applied incrementally. If "modify" is false and the operation
// succeeds, then the configuration of the cluster matches the specification exactly; in this
// case any unset portions of the specification will result in unset or default portions of the
// configuration." CreateClusterEx takes a ClusterConfigSpecEx the same way: a cluster created
// without drsConfig.enabled has DRS off, as on vCenter.
//
// ResourcePool.ImportVApp, host: "The target host on which the virtual machines will run. This
// must specify a host that is a member of the ComputeResource indirectly specified by the pool.
// For a stand-alone host or a cluster with DRS, it can be omitted, and the system selects a
// default." The reference names no fault for omitting it elsewhere: lab choice, InvalidArgument
// with invalidProperty "host", the fault the same rule raises for clones and relocations.
// VirtualMachineRelocateSpec.host (CloneVM_Task's spec.location, RelocateVM_Task's spec): "if
// resource pool is specified, and the target pool represents a cluster without DRS enabled, an
// InvalidArgument exception be thrown."
//
// Stock vcsim 0.24 enables DRS on every cluster it creates (CreateClusterComputeResource),
// ignores drsConfig in ReconfigureComputeResource_Task, and places a VM on any host of the
// cluster. The default VPX inventory is left as it is: its clusters keep DRS on.

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// clusterOf is the cluster a resource pool belongs to, or nil (a standalone host's pool).
func clusterOf(pool types.ManagedObjectReference) *simulator.ClusterComputeResource {
	obj, ok := simulator.Map.Get(pool).(mo.Entity)
	for ok && obj != nil {
		switch parent := obj.(type) {
		case *simulator.ClusterComputeResource:
			return parent
		}
		if obj.Reference().Type == "ComputeResource" || obj.Entity().Parent == nil {
			return nil
		}
		obj, ok = simulator.Map.Get(*obj.Entity().Parent).(mo.Entity)
	}
	return nil
}

func drsEnabled(cluster *simulator.ClusterComputeResource) bool {
	config, ok := cluster.ConfigurationEx.(*types.ClusterConfigInfoEx)
	return ok && config.DrsConfig.Enabled != nil && *config.DrsConfig.Enabled
}

// placementFault is the fault of placing a VM in pool without a host, or nil.
func placementFault(pool, host *types.ManagedObjectReference, property string) types.BaseMethodFault {
	if pool == nil || host != nil {
		return nil
	}
	if cluster := clusterOf(*pool); cluster != nil && !drsEnabled(cluster) {
		return &types.InvalidArgument{InvalidProperty: property}
	}
	return nil
}

// setDrs sets a cluster's configurationEx.drsConfig.enabled, visible to PropertyCollector.
func setDrs(cluster *simulator.ClusterComputeResource, enabled bool) {
	simulator.Map.WithLock(cluster, func() {
		config, ok := cluster.ConfigurationEx.(*types.ClusterConfigInfoEx)
		if !ok {
			return
		}
		config.DrsConfig.Enabled = types.NewBool(enabled)
		simulator.Map.Update(cluster, []types.PropertyChange{{Name: "configurationEx", Val: config}})
	})
}

// drsOfSpec is what a ClusterConfigSpecEx says of drsConfig.enabled: (value, true) if it says
// something, else (false, !modify): a replacing spec without it turns DRS off.
func drsOfSpec(spec types.BaseComputeResourceConfigSpec, modify bool) (enabled bool, set bool) {
	ex, ok := spec.(*types.ClusterConfigSpecEx)
	if !ok {
		return false, false
	}
	if ex.DrsConfig != nil && ex.DrsConfig.Enabled != nil {
		return *ex.DrsConfig.Enabled, true
	}
	return false, !modify
}
