//! chatwire's database entities: conversations and their messages.
//!
//! Plain sea-orm models shared by the server and the migrations' tests.

pub mod conversation;
pub mod message;

pub use conversation::Entity as Conversation;
pub use message::Entity as Message;
