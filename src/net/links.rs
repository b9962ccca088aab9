//! Links, addresses and routes over rtnetlink (the `ip` commands the pod network
//! needs), each operation idempotent so a retry after a crash finishes the job.
//! A netlink socket stays in the network namespace it was created in, so
//! [`connect_in`] configures a pod's namespace by opening the socket on a
//! short-lived thread that entered it; nothing else in the agent moves.

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol};
use rtnetlink::sys::{Socket, TokioSocket, protocols::NETLINK_ROUTE};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};

pub type Error = rtnetlink::Error;

/// The errno a netlink request failed with (positive), if the kernel refused it.
pub fn errno(e: &Error) -> Option<i32> {
    match e {
        Error::NetlinkError(message) => message.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A connection in the calling thread's network namespace.
pub fn connect() -> io::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}

/// A connection in the network namespace `netns` (e.g. `/proc/<pid>/ns/net`).
pub fn connect_in(netns: &File) -> io::Result<Handle> {
    let fd = netns.as_raw_fd();
    let socket = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on this short-lived thread only, with a namespace file we hold open.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Socket::new(NETLINK_ROUTE)
            })
            .join()
            .map_err(|_| io::Error::other("the thread entering the pod's network namespace panicked"))?
    })?;
    socket.set_non_blocking(true)?;
    // SAFETY: the descriptor is a netlink socket we own; ownership moves to the TokioSocket.
    let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (connection, handle, _) = rtnetlink::from_socket(socket);
    tokio::spawn(connection);
    Ok(handle)
}

/// The link named `name`, if it exists.
pub async fn link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, Error> {
    match handle.link().get().match_name(name.to_owned()).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The bridge a link is a port of.
pub fn controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| if let LinkAttribute::Controller(i) = a { Some(*i) } else { None })
}

pub async fn set_up(handle: &Handle, index: u32) -> Result<(), Error> {
    handle.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await
}

pub async fn delete_link(handle: &Handle, name: &str) -> Result<(), Error> {
    if let Some(link) = link(handle, name).await? {
        match handle.link().del(link.header.index).execute().await {
            Err(e) if errno(&e) == Some(libc::ENODEV) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Makes sure bridge `name` exists and is up, with `address/prefix` as its
/// only IPv4 address and bridged IPv4 passing netfilter; returns its index.
pub async fn ensure_bridge(handle: &Handle, name: &str, address: Ipv4Addr, prefix: u8) -> Result<u32, Error> {
    let index = match link(handle, name).await? {
        Some(link) => link.header.index,
        None => {
            let message = LinkBridge::new(name).nf_call_iptables(true).build();
            match handle.link().add(message).execute().await {
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                other => other?,
            }
            link(handle, name).await?.ok_or(Error::RequestFailed)?.header.index
        }
    };
    ensure_only_address(handle, index, address, prefix).await?;
    set_up(handle, index).await?;
    Ok(index)
}

/// Gives link `index` the IPv4 address `address/prefix`, removing any other.
pub async fn ensure_only_address(handle: &Handle, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), Error> {
    let existing: Vec<_> = handle.address().get().set_link_index_filter(index).execute().try_collect().await?;
    let mut present = false;
    for message in existing.into_iter().filter(|m| m.header.family == AddressFamily::Inet) {
        let ip = message.attributes.iter().find_map(|a| if let AddressAttribute::Local(IpAddr::V4(ip)) = a { Some(*ip) } else { None });
        if ip == Some(address) && message.header.prefix_len == prefix {
            present = true;
        } else {
            handle.address().del(message).execute().await?;
        }
    }
    if !present {
        match handle.address().add(index, IpAddr::V4(address), prefix).execute().await {
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Creates a veth pair: `name` here, its peer `peer_name` in the namespace `peer_netns`.
pub async fn create_veth(handle: &Handle, name: &str, peer_name: &str, peer_netns: &File) -> Result<(), Error> {
    let peer = LinkUnspec::new_with_name(peer_name).setns_by_fd(peer_netns.as_raw_fd()).build();
    let message = LinkVeth::new(name, peer_name).set_info_data(InfoData::Veth(InfoVeth::Peer(peer))).build();
    handle.link().add(message).execute().await
}

/// Makes link `index` an up port of `bridge` with hairpin mode on (a pod
/// reaching itself through a Service is sent back out of the port it came from).
pub async fn attach_to_bridge(handle: &Handle, index: u32, bridge: u32) -> Result<(), Error> {
    handle.link().set(LinkUnspec::new_with_index(index).controller(bridge).up().build()).execute().await?;
    handle.link().set_port(LinkBridgePort::new(index).hairpin(true).build()).execute().await
}

fn destination(route: &RouteMessage) -> Option<Ipv4Addr> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

fn gateway(route: &RouteMessage) -> Option<Ipv4Addr> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

/// A route of the main table: destination prefix and gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub destination: ipnet::Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// The IPv4 routes of the main table installed with `protocol`.
pub async fn routes(handle: &Handle, protocol: u8) -> Result<Vec<Route>, Error> {
    let all: Vec<RouteMessage> = handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute().try_collect().await?;
    Ok(all
        .iter()
        .filter(|r| r.header.table == RouteHeader::RT_TABLE_MAIN && r.header.protocol == RouteProtocol::from(protocol))
        .filter_map(|r| {
            let destination = ipnet::Ipv4Net::new(destination(r)?, r.header.destination_prefix_length).ok()?;
            Some(Route { destination, gateway: gateway(r)? })
        })
        .collect())
}

fn route_message(route: &Route, protocol: u8) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.destination.network(), route.destination.prefix_len())
        .gateway(route.gateway)
        .protocol(RouteProtocol::from(protocol))
        .build()
}

/// Adds or replaces a route (`ip route replace … proto <protocol>`).
pub async fn replace_route(handle: &Handle, route: &Route, protocol: u8) -> Result<(), Error> {
    handle.route().add(route_message(route, protocol)).replace().execute().await
}

pub async fn delete_route(handle: &Handle, route: &Route, protocol: u8) -> Result<(), Error> {
    match handle.route().del(route_message(route, protocol)).execute().await {
        Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
        other => other,
    }
}

/// The default route via `gateway` (`ip route replace default via …`).
pub async fn replace_default_route(handle: &Handle, gateway: Ipv4Addr) -> Result<(), Error> {
    let message = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).protocol(RouteProtocol::Boot).build();
    handle.route().add(message).replace().execute().await
}
