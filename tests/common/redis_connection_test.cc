#include "common/redis_connection.h"

#include <gtest/gtest.h>

#include <thread>

#include "support/redis_server.h"

namespace bw {
namespace {

TEST(RedisUrl, ParsesEveryPart) {
  auto o = parse_redis_url("redis://user:secret@cache.internal:6380/2");
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_EQ(o->username, "user");
  EXPECT_EQ(o->password, "secret");
  EXPECT_EQ(o->host, "cache.internal");
  EXPECT_EQ(o->port, 6380);
  EXPECT_EQ(o->db, 2);
  auto plain = parse_redis_url("redis://localhost");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->port, 6379);
  EXPECT_EQ(plain->db, 0);
  auto password_only = parse_redis_url("redis://:pw@h:1/");
  ASSERT_TRUE(password_only.ok());
  EXPECT_EQ(password_only->username, "");
  EXPECT_EQ(password_only->password, "pw");
}

TEST(RedisUrl, RejectsBadUrls) {
  for (const char* bad : {"http://h:1", "redis://", "redis://h:0", "redis://h:70000", "redis://h:x", "redis://h/-1"}) {
    auto o = parse_redis_url(bad);
    EXPECT_FALSE(o.ok()) << bad;
    if (!o.ok()) {
      EXPECT_EQ(o.status().code(), StatusCode::kInvalidArgument) << bad;
    }
  }
}

TEST(RedisConnection, CommandsPipelinesAndErrorReplies) {
  BW_REDIS_OR_SKIP();
  test::RedisServer redis;
  ASSERT_TRUE(redis.start());
  auto options = parse_redis_url(redis.url());
  ASSERT_TRUE(options.ok());
  auto connection = RedisConnection::connect(*options);
  ASSERT_TRUE(connection.ok()) << connection.status().to_string();
  RedisConnection& c = **connection;
  const std::string binary("a\0b\r\n", 5);
  auto set = c.command({"SET", "k", binary});
  ASSERT_TRUE(set.ok());
  EXPECT_EQ(set->type, RedisReply::Type::kStatus);
  auto get = c.command({"GET", "k"});
  ASSERT_TRUE(get.ok());
  EXPECT_EQ(get->str, binary);
  EXPECT_TRUE(c.command({"GET", "missing"})->is_nil());
  auto replies = c.pipeline({{"RPUSH", "l", "x", "y"}, {"LRANGE", "l", "0", "-1"}, {"INCRBY", "l", "1"}});
  ASSERT_TRUE(replies.ok());
  ASSERT_EQ(replies->size(), 3u);
  EXPECT_EQ((*replies)[0].integer, 2);
  ASSERT_EQ((*replies)[1].elements.size(), 2u);
  EXPECT_EQ((*replies)[1].elements[1].str, "y");
  EXPECT_TRUE((*replies)[2].is_error());  // WRONGTYPE is a reply, not a broken connection
  EXPECT_TRUE(c.command({"PING"}).ok());
}

TEST(RedisConnection, DownRedisIsUnavailableAndReconnectsWhenBack) {
  BW_REDIS_OR_SKIP();
  test::RedisServer redis;
  RedisOptions options;
  options.port = redis.port();
  options.reconnect_backoff = std::chrono::milliseconds(50);
  auto connection = RedisConnection::create(options);
  auto down = connection->command({"PING"});
  ASSERT_FALSE(down.ok());
  EXPECT_EQ(down.status().code(), StatusCode::kUnavailable);
  ASSERT_TRUE(redis.start());
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  auto up = connection->command({"PING"});
  ASSERT_TRUE(up.ok()) << up.status().to_string();
  redis.stop();  // killed mid-session: the next command fails cleanly
  auto lost = connection->command({"PING"});
  ASSERT_FALSE(lost.ok());
  EXPECT_EQ(lost.status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace bw
