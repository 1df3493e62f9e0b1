//! chatwire's database entities: conversations, their messages, and token usage.
//!
//! Plain sea-orm models shared by the server and the migrations' tests.

pub mod conversation;
pub mod message;
pub mod usage;

pub use conversation::Entity as Conversation;
pub use message::Entity as Message;
pub use usage::Entity as Usage;
