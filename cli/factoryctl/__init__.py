"""factoryctl: the developer and operator command line of Inference Factory.

`factoryctl dev ...` runs the local fleet: a real Kubernetes control plane (kwokctl, binary
runtime) with simulated GPU and Neuron node pools, and, component by component, the rest of
the fleet. See `factoryctl.fleet` for the component sequence.
"""
