//! The agent's local persistence: the tasks assigned to this node and the last status reported
//! for each, on sled, so a restarted agent neither loses nor duplicates tasks.

use std::path::Path;

use prost::Message;
use shoal_api::v1::{Task, TaskStatus};

/// Local task database.
#[derive(Clone)]
pub struct TaskDb {
    tasks: sled::Tree,
    status: sled::Tree,
    /// Task id -> its address on the host's egress bridge (4 bytes).
    gateway: sled::Tree,
    db: sled::Db,
}

/// The agent's database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// sled refused.
    #[error("agent state: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record does not decode.
    #[error("agent state is damaged ({0}); remove the agent directory to start afresh")]
    Decode(#[from] prost::DecodeError),
}

impl TaskDb {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let db = sled::Config::new().path(dir).cache_capacity(8 << 20).open()?;
        Ok(Self {
            tasks: db.open_tree("tasks")?,
            status: db.open_tree("status")?,
            gateway: db.open_tree("gateway")?,
            db,
        })
    }

    /// Records (or replaces) an assigned task.
    pub fn put_task(&self, t: &Task) -> Result<(), StateError> {
        let id = t.meta.as_ref().map(|m| m.id.as_str()).unwrap_or("");
        self.tasks.insert(id, t.encode_to_vec())?;
        Ok(())
    }

    /// Forgets a task and its status.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        self.tasks.remove(id)?;
        self.status.remove(id)?;
        self.gateway.remove(id)?;
        Ok(())
    }

    /// Every recorded task.
    pub fn tasks(&self) -> Result<Vec<Task>, StateError> {
        let mut out = Vec::new();
        for kv in self.tasks.iter() {
            let (_, v) = kv?;
            out.push(Task::decode(v.as_ref())?);
        }
        Ok(out)
    }

    /// The ids of every recorded task.
    pub fn task_ids(&self) -> Result<std::collections::HashSet<String>, StateError> {
        let mut out = std::collections::HashSet::new();
        for k in self.tasks.iter().keys() {
            out.insert(String::from_utf8_lossy(&k?).into_owned());
        }
        Ok(out)
    }

    /// Records the last status of a task (durably: it is what a restart resumes from).
    pub fn put_status(&self, id: &str, s: &TaskStatus) -> Result<(), StateError> {
        self.status.insert(id, s.encode_to_vec())?;
        self.db.flush()?;
        Ok(())
    }

    /// Every task's address on the egress bridge.
    pub fn gateway_addresses(&self) -> Result<std::collections::BTreeMap<String, std::net::Ipv4Addr>, StateError> {
        let mut out = std::collections::BTreeMap::new();
        for kv in self.gateway.iter() {
            let (k, v) = kv?;
            if let Ok(b) = <[u8; 4]>::try_from(v.as_ref()) {
                out.insert(String::from_utf8_lossy(&k).into_owned(), std::net::Ipv4Addr::from(b));
            }
        }
        Ok(out)
    }

    /// Records a task's address on the egress bridge (before its namespace is made, so a
    /// restarted agent never hands it to another task).
    pub fn put_gateway_address(&self, id: &str, a: std::net::Ipv4Addr) -> Result<(), StateError> {
        self.gateway.insert(id, &a.octets())?;
        Ok(())
    }

    /// The last recorded status of a task.
    pub fn status(&self, id: &str) -> Result<Option<TaskStatus>, StateError> {
        Ok(self.status.get(id)?.map(|v| TaskStatus::decode(v.as_ref())).transpose()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::{Meta, TaskState};

    #[test]
    fn tasks_and_status_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = Task { meta: Some(Meta { id: "t1".into(), ..Default::default() }), slot: 3, ..Default::default() };
        {
            let db = TaskDb::open(dir.path()).expect("open");
            db.put_task(&t).expect("put");
            db.put_status("t1", &TaskStatus { state: TaskState::Running as i32, ..Default::default() })
                .expect("status");
        }
        let db = TaskDb::open(dir.path()).expect("reopen");
        assert_eq!(db.tasks().expect("tasks"), vec![t]);
        assert_eq!(db.task_ids().expect("ids"), ["t1".to_string()].into());
        assert_eq!(db.status("t1").expect("status").map(|s| s.state()), Some(TaskState::Running));
        db.put_gateway_address("t1", std::net::Ipv4Addr::new(172, 18, 0, 2)).expect("gateway");
        assert_eq!(db.gateway_addresses().expect("read").get("t1"), Some(&std::net::Ipv4Addr::new(172, 18, 0, 2)));
        db.remove("t1").expect("remove");
        assert!(db.gateway_addresses().expect("read").is_empty());
        assert!(db.tasks().expect("tasks").is_empty());
        assert!(db.task_ids().expect("ids").is_empty());
        assert_eq!(db.status("t1").expect("status"), None);
    }
}
