//! Open connections per user on this node (`/ai` sockets and SSE streams), capped by
//! `MAX_CONNECTIONS_PER_USER`: one token cannot hold thousands of sockets.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

/// Counts of open connections by user; cheap to clone.
#[derive(Clone)]
pub struct UserConnections {
    open: Arc<Mutex<HashMap<String, usize>>>,
    limit: usize,
}

impl UserConnections {
    pub fn new(limit: usize) -> Self {
        Self { open: Arc::default(), limit }
    }

    /// A place for one more connection of `user`, or `None` at the limit.
    pub fn acquire(&self, user: &str) -> Option<ConnectionSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(user.to_owned()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot(Arc::new(Slot { owner: self.clone(), user: user.to_owned() })))
    }

    /// Users holding at least one connection (the map never keeps the others).
    pub fn users(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// One connection's place; given back when the last clone is dropped.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<Slot>);

struct Slot {
    owner: UserConnections,
    user: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_the_limit_and_leaving_frees_a_place() {
        let connections = UserConnections::new(2);
        let a = connections.acquire("u1").unwrap();
        let b = connections.acquire("u1").unwrap();
        assert!(connections.acquire("u1").is_none());
        let other = connections.acquire("u2").unwrap();
        drop(a);
        let c = connections.acquire("u1").unwrap();
        assert!(connections.acquire("u1").is_none());
        drop((b, c, other));
        assert_eq!(connections.users(), 0, "no entry stays for users without connections");
    }
}
